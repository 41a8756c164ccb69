"""Typed configuration: dataclasses, YAML presets shipped in the package, `key=value` overrides.

Precedence is defaults < preset YAML (after the presets it names as its `base`) < `--config FILE` < `key=value`
on the command line. Each default is written exactly once, here, in the dataclass field (a shared section that
another stage uses with other defaults gets them in that stage's `default_factory`).

A field that is a choice is a `Literal`: a value outside it is refused with the key and the allowed values.
Every section has `validate(key)` for its own ranges; `load_config` runs them all, so a command stops on a bad
value before it writes anything or starts a worker. Rules that tie `apr-ds rl` to other sections are in
`Config.validate_rl`, which apr_ds/launch.py runs before it starts any rank.

    from apr_ds.config import load_config
    cfg = load_config("tiny", ["task.num_train=500", "data.workers=1"])
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from apr_ds.errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"
BASE_KEY = "base"
"""A preset YAML may name another preset as its `base`: that one is applied first (`cpu_rl` = `cpu` + its RL recipe)."""


class ConfigError(UserError, ValueError):
    """A config key, value or file that cannot be used. The message names the key and the fix."""


# ---------------------------------------------------------------------------- choices

Method = Literal["sosp", "apr"]
"""The two trace formats: what `apr-ds data` writes, `sft` trains on and `rl` samples."""
Precision = Literal["fp32", "bf16"]
Schedule = Literal["cosine", "constant"]
LossAgg = Literal["token_mean", "token_sum"]
Advantage = Literal["group_norm", "group_mean", "reward"]
Server = Literal["ours", "sglang", "url"]
TaskName = Literal["countdown", "sudoku"]
Heuristic = Literal["mult", "sum"]
SudokuCellChoice = Literal["most_constrained", "first_blank"]
OverLength = Literal["drop", "keep"]
ModelPreset = Literal["tiny", "cpu", "paper"]
ModelFamily = Literal["llama", "qwen2", "qwen3"]
Split = Literal["train", "val", "test", "test_unseen_targets"]
ServingDtype = Literal["float32", "bfloat16", "float16", "auto"]

METHODS: tuple[str, ...] = typing.get_args(Method)
RL_LOSS_AGGS: tuple[str, ...] = typing.get_args(LossAgg)
RL_ADVANTAGES: tuple[str, ...] = typing.get_args(Advantage)
RL_SERVERS: tuple[str, ...] = typing.get_args(Server)
SPLITS: tuple[str, ...] = typing.get_args(Split)

MOVED = {
    "sft.ds_config": "sft.deepspeed.config",
    "sft.precision": "sft.deepspeed.precision",
    "sft.micro_batch": "sft.deepspeed.micro_batch",
    "sft.lr": "sft.optim.lr",
    "sft.warmup_start_lr": "sft.optim.warmup_start_lr",
    "sft.warmup_steps": "sft.optim.warmup_steps",
    "sft.min_lr": "sft.optim.min_lr",
    "sft.beta1": "sft.optim.beta1",
    "sft.beta2": "sft.optim.beta2",
    "sft.weight_decay": "sft.optim.weight_decay",
    "sft.grad_clip": "sft.optim.grad_clip",
    "sft.save_every": "sft.checkpoint.save_every",
    "sft.keep_last": "sft.checkpoint.keep_last",
    "rl.ds_config": "rl.deepspeed.config",
    "rl.precision": "rl.deepspeed.precision",
    "rl.micro_batch": "rl.deepspeed.micro_batch",
    "rl.lr": "rl.optim.lr",
    "rl.weight_decay": "rl.optim.weight_decay",
    "rl.grad_clip": "rl.optim.grad_clip",
    "rl.save_every": "rl.checkpoint.save_every",
    "rl.keep_last": "rl.checkpoint.keep_last",
}
"""Keys that left their section for a shared sub-section: old key -> new key. Setting an old one says where it went."""


class _Ranges:
    """Range checks of one section's fields; each message names the full key, the bound and the value."""

    def __init__(self, section: Any, key: str):
        self.section, self.key = section, key

    def _fail(self, name: str, rule: str, why: str) -> None:
        raise ConfigError(f"{self.key}.{name} must be {rule}{why}, got {getattr(self.section, name)!r}")

    def rule(self, name: str, holds: bool, rule: str, why: str = "") -> None:
        if not holds:
            self._fail(name, rule, why)

    def at_least(self, name: str, low: float, why: str = "") -> None:
        if getattr(self.section, name) < low:
            self._fail(name, f">= {low}", why)

    def above(self, name: str, low: float, why: str = "") -> None:
        if not getattr(self.section, name) > low:
            self._fail(name, f"> {low}", why)

    def between(self, name: str, low: float, high: float, why: str = "") -> None:
        if not low <= getattr(self.section, name) <= high:
            self._fail(name, f"in [{low}, {high}]", why)

    def each_at_least(self, name: str, low: float, why: str = "") -> None:
        if any(value < low for value in getattr(self.section, name)):
            self._fail(name, f"a list of values >= {low}", why)


# ---------------------------------------------------------------------------- sections


@dataclass
class TaskConfig:
    """The problem distribution and its splits."""

    name: TaskName = "countdown"
    """Which task: `countdown` or `sudoku` (apr_ds/tasks/). The `num_*` counts, `unseen_target_fraction` and `seed`
    are every task's; the other fields are named after the one task that reads them."""
    num_numbers: int = 4
    """How many input numbers a problem has."""
    min_number: int = 1
    """Smallest input number (inclusive)."""
    max_number: int = 99
    """Largest input number (inclusive)."""
    min_target: int = 10
    """Smallest target (inclusive)."""
    max_target: int = 100
    """Largest target (inclusive)."""
    num_train: int = 500_000
    num_val: int = 1_000
    num_test: int = 1_000
    num_test_unseen_targets: int = 1_000
    """Problems whose targets never occur in train (Stream of Search's held-out targets)."""
    unseen_target_fraction: float = 0.1
    """Fraction of the target range held out of train/val/test for `test_unseen_targets` (Sudoku: of the solved
    grids, a puzzle's solution playing the target's part)."""
    seed: int = 42
    sudoku_size: int = 4
    """Sudoku's grid side: 4 (boxes of 2x2), 6 (boxes of two rows by three columns) or 9 (3x3)."""
    sudoku_blanks: int = 10
    """Sudoku's difficulty: the blank cells of every puzzle (each puzzle still has exactly one solution). At most
    the size's cells minus the fewest givens a single-solution puzzle has (12 at 4x4, 28 at 6x6, 64 at 9x9); near
    that bound almost no solved grid can be blanked that far, and `apr-ds data` stops with a message."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        check.at_least("num_numbers", 2, " (a problem combines its numbers)")
        check.at_least("min_number", 1)
        check.rule("max_number", self.max_number >= self.min_number, f">= {key}.min_number={self.min_number}")
        check.at_least("min_target", 1)
        check.rule("max_target", self.max_target >= self.min_target, f">= {key}.min_target={self.min_target}")
        for split in ("num_train", "num_val", "num_test", "num_test_unseen_targets"):
            check.at_least(split, 0)
        check.rule("unseen_target_fraction", 0 <= self.unseen_target_fraction < 1, "in [0, 1)",
                   " (1 leaves no targets for train, val and test)")
        from apr_ds.tasks.sudoku import MIN_GIVENS, SIZES, max_blanks
        check.rule("sudoku_size", self.sudoku_size in SIZES, " or ".join(str(s) for s in SIZES))
        check.between("sudoku_blanks", 1, max_blanks(self.sudoku_size), f" (a {self.sudoku_size}x{self.sudoku_size} "
                      f"puzzle with one solution keeps at least {MIN_GIVENS[self.sudoku_size]} givens)")


@dataclass
class SolverConfig:
    """The symbolic solvers that write SFT traces (apr-reference §2.5)."""

    heuristic: Heuristic = "mult"
    """`mult` (distance to the nearest factor of the target; the one the reference really uses) or `sum`."""
    sosp_min_beam: int = 1
    sosp_max_beam: int = 5
    """SoS+ beam width is drawn uniformly from sosp_min_beam..sosp_max_beam (the reference: 1..5).
    Greedy decoding imitates the most common width, so a wide fixed beam (min = max) teaches the widest search."""
    sosp_subsearch_probability: float = 0.5
    """SoS+ chance of an inline recursive sub search at each expansion."""
    apr_min_beam: int = 1
    apr_max_beam: int = 10
    """APR main-thread beam width is drawn uniformly from apr_min_beam..apr_max_beam (the reference: 1..10)."""
    apr_max_child_beam: int = 15
    """APR child beam width is drawn uniformly from beam..apr_max_child_beam."""
    spawn_probability: float = 0.9
    """Chance that the APR main thread spawns at an eligible expansion (Countdown: >= 2 non-terminal children;
    Sudoku: a branching cell). The reference code uses 0.9; the paper's text says 10%. 0.9 reproduces the released data."""
    max_spawn_depth: int = 1
    """1 = only the main thread spawns (APR). 2+ lets children spawn too (nested; off by default)."""
    sudoku_max_children: int = 4
    """Sudoku APR: a branching cell with more candidates than this is searched sequentially, not spawned on
    (a spawn starts one child per candidate)."""
    sudoku_cell_choice: SudokuCellChoice = "most_constrained"
    """The cell a Sudoku search fills next: `most_constrained` (the fewest candidates) or `first_blank` (row-major
    order). Most constrained first solves every 4x4 puzzle with one solution, and most 6x6 ones below ~24 blanks,
    without ever branching, so their traces hold no search; first blank branches and backtracks on them."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        for method in METHODS:
            low, high = getattr(self, f"{method}_min_beam"), getattr(self, f"{method}_max_beam")
            if not 1 <= low <= high:
                raise ConfigError(f"{key}.{method}_min_beam must be between 1 and {key}.{method}_max_beam, got {low}..{high}")
        check.at_least("apr_max_child_beam", 1)
        check.between("sosp_subsearch_probability", 0, 1)
        check.between("spawn_probability", 0, 1)
        check.at_least("max_spawn_depth", 0)
        check.at_least("sudoku_max_children", 2, " (a branching cell has at least 2 candidates)")


@dataclass
class DataConfig:
    """Turning solver runs into SFT sequences and token files."""

    workers: int = 2
    """Processes for problem generation and solving. Output is identical for any value."""
    max_seq_len: int = 4096
    """Sequences longer than this (in tokens, with bos/eos) are handled by `over_length`."""
    over_length: OverLength = "drop"
    """`drop` removes a problem's sequences if any of them is too long; `keep` leaves them (the learner truncates)."""
    keep_failed: bool = True
    """Keep traces whose search found no solution (they teach the model to give up and backtrack)."""
    token_budget_bin: int = 512
    """`Token Budget: B` rounds the SoS+ trace length up to a multiple of this."""
    tokenizer: str = ""
    """Empty: build the domain tokenizer. Else a local Hugging Face tokenizer directory to use instead
    (e.g. Llama-2's, already on disk; nothing is downloaded). It needs bos and eos tokens."""
    sosp_token_budget: bool = False
    """Prefix SoS+ sequences with `Token Budget: B ` (length conditioning, apr-reference §3)."""
    apr_sub_call_budget: bool = False
    """Prefix APR root main calls with `Sub Call Budget: N ` (child-count conditioning)."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        check.at_least("workers", 1)
        check.at_least("max_seq_len", 2, " (a sequence holds at least bos and eos)")
        check.at_least("token_budget_bin", 1)


@dataclass
class ModelConfig:
    """The model SFT trains from scratch (apr_ds/model.py presets; apr-reference §3)."""

    preset: ModelPreset = "tiny"
    """Named shape: `tiny` (~1M params), `cpu` (~2M), `paper` (18 layers, d=1024: 228M non-embedding)."""
    family: ModelFamily = "llama"
    """`llama` (the paper's), `qwen2` (adds q/k/v biases) or `qwen3` (adds per-head q/k RMSNorm): the families that
    followed APR start from Qwen models, and our server runs all three."""
    tie_embeddings: bool = False
    """One matrix for the input embedding and the output layer (small Qwen models tie them)."""
    context: int | None = None
    """Maximum sequence length in tokens; None = the preset's (tiny 512, cpu 768, paper 4096). Longer sequences are truncated."""

    def validate(self, key: str) -> None:
        if self.context is not None:
            _Ranges(self, key).at_least("context", 2)


@dataclass
class DeepSpeedConfig:
    """The DeepSpeed engine a learner trains with (ZeRO-3). Shared by `sft` and `rl`, each with its own defaults."""

    config: str = "zero3.json"
    """DeepSpeed config: a file name in ds_configs/ (`zero3.json` bf16 GPUs, `zero3_cpu.json`, `zero3_offload.json`) or a path.
    Its "auto" values (batch sizes, accumulation, clipping) are filled in from this YAML."""
    precision: Precision = "bf16"
    """`fp32` or `bf16`. Must agree with the DeepSpeed config's `bf16.enabled`."""
    micro_batch: int = 8
    """Sequences per rank per forward/backward."""

    def validate(self, key: str) -> None:
        if not self.config:
            raise ConfigError(f"{key}.config must name a DeepSpeed config (a file in ds_configs/ or a path)")
        _Ranges(self, key).at_least("micro_batch", 1)


@dataclass
class OptimConfig:
    """AdamW and its learning-rate schedule. Shared by `sft` and `rl`, each with its own defaults."""

    lr: float = 5e-5
    """Peak learning rate, reached at the end of warmup."""
    schedule: Schedule = "cosine"
    """After warmup: `cosine` decays from `lr` to `min_lr` over the run's optimizer steps; `constant` stays at `lr`."""
    warmup_start_lr: float = 5e-6
    """Learning rate of the first step; rises linearly to `lr` over `warmup_steps`."""
    warmup_steps: int = 1
    min_lr: float = 5e-7
    """Where the cosine decay ends, at the run's last optimizer step."""
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, applied to matrices (embeddings included), not to RMSNorm gains."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        check.above("lr", 0, " (the schedule is a multiple of it)")
        check.at_least("warmup_start_lr", 0)
        check.at_least("warmup_steps", 0)
        check.at_least("min_lr", 0)
        if self.schedule == "cosine" and self.min_lr > self.lr:
            raise ConfigError(f"{key}.min_lr={self.min_lr} is above {key}.lr={self.lr}: the cosine schedule decays from lr to min_lr")
        for beta in ("beta1", "beta2"):
            check.rule(beta, 0 <= getattr(self, beta) < 1, "in [0, 1)", " (at 1 Adam's moving averages never move)")
        check.at_least("weight_decay", 0)
        check.at_least("grad_clip", 0, " (0 turns clipping off)")


@dataclass
class CheckpointConfig:
    """Sharded DeepSpeed checkpoints (learner/checkpoint.py). Shared by `sft` and `rl`, each with its own defaults."""

    save_every: int = 1000
    """Steps between checkpoints; a final one is always written."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after a new one is complete. 0 keeps them all."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        check.at_least("save_every", 1)
        check.at_least("keep_last", 0, " (0 keeps every checkpoint)")


@dataclass
class SFTConfig:
    """Supervised fine-tuning on solver traces with DeepSpeed ZeRO-3 (apr-reference §3). Writes {run_dir}/sft/{method}/."""

    method: Method = "sosp"
    """Which sequences to train on: `sosp` (SoS+) or `apr`."""
    global_batch: int = 256
    """Sequences per optimizer step over all ranks. Accumulation steps = global_batch / (deepspeed.micro_batch x world size)."""
    steps: int = 19_000
    """Optimizer steps in the whole run (the cosine schedule spans them)."""
    seed: int = 0
    """Seeds model init and the data order (with the epoch)."""
    init_model: str = ""
    """Start from this Hugging Face model directory instead of fresh weights (a second SFT stage on new data).
    `{method}` is replaced by sft.method. Its tokenizer must be the data's and its shape the model preset's."""
    bucket_steps: int = 50
    """Length bucketing: each window of this many steps' sequences is sorted by length before it is cut into batches.
    Larger wastes less compute on padding; 1 still buckets within a step."""
    log_every: int = 10
    """Steps between train-scalar logs (TensorBoard and scalars.jsonl)."""
    eval_every: int = 500
    """Steps between validation loss + greedy probe; both also run at the end."""
    eval_sequences: int = 512
    """Validation sequences scored for val loss (the first ones of the val split); 0 = all."""
    probe_problems: int = 32
    """Val problems decoded greedily (main thread only) and checked by the strict verifier at each eval; 0 = off."""
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        for name in ("global_batch", "steps", "bucket_steps", "log_every", "eval_every"):
            check.at_least(name, 1)
        check.at_least("eval_sequences", 0, " (0 = all)")
        check.at_least("probe_problems", 0, " (0 = off)")
        if self.global_batch % self.deepspeed.micro_batch:  # the world size is checked too once the launcher sets it
            raise ConfigError(f"{key}.global_batch={self.global_batch} is not a multiple of "
                              f"{key}.deepspeed.micro_batch={self.deepspeed.micro_batch}")


@dataclass
class EngineConfig:
    """Our CPU inference server (`apr-ds serve`): batching, KV cache and request limits."""

    max_running_requests: int = 128
    """Requests decoded together in one forward pass at most; the rest wait."""
    max_batch_tokens: int = 4096
    """Prompt tokens prefilled in one step at most (a longer single prompt still runs alone)."""
    kv_cache_tokens: int = 32768
    """KV cache capacity in tokens, shared by running requests and the prefix cache."""
    prefix_cache: bool = True
    """Reuse KV of the longest cached token prefix (radix tree, LRU eviction). Off = recompute every prompt."""
    default_max_new_tokens: int = 128
    """`max_new_tokens` when a request does not give one (SGLang's default)."""
    max_new_tokens_limit: int = 1_048_576
    """Requests asking for more new tokens than this are rejected as absurd (HTTP 400); smaller values are
    clamped to the context limit and finish with reason `length`."""
    max_model_len: int = 0
    """Context limit (prompt + generation) in tokens; 0 = the model's max_position_embeddings."""
    dtype: ServingDtype = "float32"
    """Weights and KV dtype: float32, bfloat16, float16, or auto (the checkpoint's). bf16 is slow on AVX2-only CPUs."""
    num_threads: int = 0
    """torch intra-op threads for the forward pass; 0 = torch's default."""
    seed: int = 0
    """Seed of the sampling generator."""
    weight_sync_timeout_s: float = 300.0
    """Timeout of the weight-update group's rendezvous and broadcasts."""
    replay_file: str = ""
    """Test instrument: answer with the recorded sequences of this JSONL ({"text": ...} lines) instead of the
    model's predictions (engine/replay.py). Empty = normal serving."""
    replay_compute: bool = False
    """With replay_file: still run the model's forward pass every step, so timings are realistic."""
    max_parallel_samples: int = 64
    """Largest `n` (samples of one prompt, sharing its cached prefix) a /generate or /v1/completions request may
    ask for; above it the request gets HTTP 400."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        for name in ("max_running_requests", "max_batch_tokens", "kv_cache_tokens", "default_max_new_tokens",
                     "max_new_tokens_limit", "max_parallel_samples"):
            check.at_least(name, 1)
        check.at_least("max_model_len", 0, " (0 = the model's)")
        check.at_least("num_threads", 0, " (0 = torch's default)")
        check.above("weight_sync_timeout_s", 0)


@dataclass
class RolloutConfig:
    """Executing programs on an inference server: limits and sampling (shared by eval and RL)."""

    max_context: int = 4096
    """Per-thread limit: prompt + generation <= this many tokens (max_new_tokens is clamped on the client)."""
    max_children: int = 16
    """Children one spawn may start; a spawn naming more fails its thread."""
    max_spawns: int = 8
    """Spawns one thread may make; one more fails the thread."""
    max_depth: int = 1
    """Spawn depth: 1 = only the main thread spawns (APR). 2+ runs children's own spawns (nested)."""
    timeout_s: float = 600.0
    """Wall-clock limit of one program; a program past it scores 0."""
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = -1
    check_spawned_numbers: bool = False
    """True: a spawn whose child's state does not follow from its parent's (Countdown: the node's numbers; Sudoku: a
    placement on a filled cell or one that repeats a digit) fails the program. False (the reference runtime): the
    child starts from the state the parent claimed; the strict verifier still checks the answer against the
    problem itself, so a wrong step can never count as a solve."""
    sequential_children: bool = False
    """Run a spawn's children one after another instead of concurrently (for measuring what concurrency buys)."""
    concurrency: int = 16
    """Programs in flight at once against one server."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        check.at_least("max_context", 2)
        check.at_least("max_children", 1)
        check.at_least("max_spawns", 0)
        check.at_least("max_depth", 0)
        check.above("timeout_s", 0)
        check.at_least("temperature", 0, " (0 is greedy decoding)")
        check.rule("top_p", 0 < self.top_p <= 1, "in (0, 1]")
        check.rule("top_k", self.top_k == -1 or self.top_k >= 1, "-1 (off) or >= 1")
        check.at_least("concurrency", 1)


@dataclass
class EvalConfig:
    """`apr-ds eval`: which problems, which settings to sweep, where results go."""

    split: Split = "test"
    """Problem split under {run_dir}/data/problems/: train, val, test or test_unseen_targets."""
    problems_file: str = ""
    """A problems JSONL to use instead of the split's file."""
    num_problems: int = 100
    """Evaluate the first N problems of the split; 0 = all."""
    temperatures: list[float] = field(default_factory=lambda: [0.0])
    """One evaluation per temperature (greedy by default, as the paper)."""
    budgets: list[int] = field(default_factory=list)
    """Conditioning sweep: `Sub Call Budget: N` for apr, `Token Budget: B` for sosp/bon. Empty = unconditioned."""
    n: int = 1
    """Samples per problem for bon; pass@k and cons@k are reported for k = 1, 2, 4, ... n."""
    context_windows: list[int] = field(default_factory=list)
    """Windows W for cumulative accuracy (correct and longest thread <= W). Empty = powers of two up to rollout.max_context."""
    servers: int = 1
    """Servers eval starts itself (when no --url), each problem on one of them: one per core on a CPU machine,
    where a small model's decoding does not speed up with more threads per server."""
    server_threads: int = 0
    """OMP threads of each server eval starts itself (when no --url); 0 = torch's default."""
    out_dir: str = ""
    """Where results go; empty = {run_dir}/eval."""

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        check.at_least("num_problems", 0, " (0 = all)")
        check.each_at_least("temperatures", 0, " (0 is greedy decoding)")
        check.each_at_least("budgets", 0)
        check.at_least("n", 1)
        check.each_at_least("context_windows", 1)
        check.at_least("servers", 1)
        check.at_least("server_threads", 0, " (0 = torch's default)")


def _rl_optim() -> OptimConfig:
    """APR's TinyRL: a constant lr of 1e-5 from the first step, no weight decay."""
    return OptimConfig(lr=1e-5, schedule="constant", warmup_steps=0, weight_decay=0.0, grad_clip=1.0)


def _rl_deepspeed() -> DeepSpeedConfig:
    """fp32 on CPU ranks; micro-batches hold whole threads, so fewer of them than SFT's."""
    return DeepSpeedConfig(config="zero3_cpu.json", precision="fp32", micro_batch=4)


def _rl_checkpoint() -> CheckpointConfig:
    """An RL step costs minutes of rollouts, so checkpoints come every few steps."""
    return CheckpointConfig(save_every=10, keep_last=2)


@dataclass
class RLConfig:
    """`apr-ds rl`: GRPO on spawn/join programs with ZeRO-3 learner ranks and separate rollout ranks (apr-reference §4)."""

    init_model: str = ""
    """The SFT model (a Hugging Face directory) RL starts from and the KL reference; empty = {run_dir}/sft/{method}/hf."""
    method: Method = "apr"
    """`apr` (spawn/join programs) or `sosp` (one sequential thread)."""
    learner_ranks: int = 1
    """MPI ranks 0..learner_ranks-1 train (DeepSpeed ZeRO-3 among themselves)."""
    rollout_ranks: int = 1
    """The remaining ranks each drive one inference server."""
    steps: int = 150
    prompts_per_step: int = 64
    """Groups (prompts) per optimizer step, split evenly over rollout ranks."""
    group_size: int = 5
    """Programs sampled per prompt (G); the advantage is normalised within a group."""
    temperature: float = 1.0
    clip_eps: float = 0.2
    beta: float = 0.001
    """k3 KL weight against the frozen SFT model (APR 0.001, SoS+ 0.01); 0 skips the reference model."""
    is_cap: float = 2.0
    """Cap of the behaviour->proximal importance weight (decoupled PPO)."""
    loss_agg: LossAgg = "token_mean"
    """How a sequence's token losses add up. `token_mean` (APR's trainer): their mean, so a token's weight shrinks
    as its thread grows, and a long failed thread is penalised less per token than a short one. `token_sum`
    (Dr. GRPO): their sum over rollout.max_context, a constant, so every generated token weighs the same. On the
    cpu task the sum did worse for both methods (docs/results.md)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: a program whose longest thread ends within this many tokens of
    rollout.max_context loses reward linearly, up to rl.overlong_penalty at the limit (where the window cuts it).
    0 = off: APR's binary reward."""
    overlong_penalty: float = 1.0
    critical_path_weight: float = 0.0
    """ThreadWeaver's parallelism bonus (lambda, theirs 0.5): a correct program gains this times
    min(acceleration - 1, rl.critical_path_cap), acceleration being total / sequential tokens (rollout/trajectory.py).
    The outcome reward alone does not care whether the children ran beside each other or the parent did the work
    itself; this pays for a shorter critical path, and only when the answer is right. 0 = off: the outcome alone."""
    critical_path_cap: float = 0.2
    """The most acceleration - 1 the bonus pays for (ThreadWeaver: 0.2), so that spawning earns a fraction of
    what a solve does and never pays for itself beyond a modest speedup."""
    line_penalty: float = 0.0
    """Subtracted from the advantage of the wrong part of every checked trace line the task can verify (an
    impossible or repeated step, a wrong result, a line that does not parse), whatever the program's outcome
    (rollout/line_marks.py marks the tokens). 0 = off: the outcome alone, as APR."""
    advantage: Advantage = "group_norm"
    """`group_norm` (GRPO, APR's trainer): (R - group mean) / group std. `group_mean` (ThreadWeaver, Dr. GRPO):
    R - group mean: dividing by the std would blow a group whose programs are all correct, and differ only by
    the critical-path bonus, up to advantages as large as a solve's. `reward`: A = R, REINFORCE without a
    baseline, which with the 0/1 reward trains only on solved programs (rejection-sampling fine-tuning done on-policy)."""
    ppo_epochs: int = 2
    """Optimizer steps on each batch (APR: 2 full-batch steps). The optimizer's schedule spans steps x ppo_epochs."""
    max_staleness: int = 1
    """eta: a program sampled with weight version v is used by learner step >= v only while step - v <= eta;
    older ones are dropped and counted. 0 = synchronous (on the same code path)."""
    bucket_mb: int = 32
    """Weight-sync bucket size: parameters gathered and broadcast together."""
    server: Server = "ours"
    """`ours` (apr-ds serve, CPU), `sglang` (python -m sglang.launch_server: GPUs, or SGLang's CPU engine where
    there is no GPU), or `url` (attach to server_urls)."""
    sglang_python: str = ""
    """The Python that runs SGLang (empty: the one running apr-ds). SGLang may live in a venv of its own, e.g.
    `.venv-sglang/bin/python` from `make sglang` on a CPU machine."""
    server_start_timeout_s: float = 600.0
    """How long a server this rank starts may take to answer /health (SGLang on GPUs loads, JIT-compiles and
    captures CUDA graphs first)."""
    server_urls: list[str] = field(default_factory=list)
    """With server=url: one URL per rollout rank."""
    server_args: list[str] = field(default_factory=list)
    """Extra arguments for the server command (e.g. SGLang flags, or engine.key=value for ours)."""
    server_threads: int = 1
    """OMP/torch threads of each CPU server."""
    programs_in_flight: int = 8
    """Programs one rollout rank runs at once against its server."""
    max_server_restarts: int = 3
    """A server this rank started and that died is restarted and re-synced this many times; then the job ends."""
    seed: int = 0
    log_every: int = 1
    keep_programs: int = 0
    """Sampled programs kept per weight version (per learner step), with their text, tree, timings, reward and version,
    in {run_dir}/rl/programs/ for `apr-ds view`: what the policy writes, watched over steps. 0 = off."""
    timeout_s: float = 600.0
    """Collective and message timeout: a rank silent this long ends the job with a message."""
    learner_cpus: list[int] = field(default_factory=list)
    """Pin learner ranks to these CPU cores (empty = no pinning), as on a cluster where roles own different devices."""
    rollout_cpus: list[int] = field(default_factory=list)
    """Pin rollout ranks, and the servers they start, to these CPU cores."""
    deepspeed: DeepSpeedConfig = field(default_factory=_rl_deepspeed)
    optim: OptimConfig = field(default_factory=_rl_optim)
    checkpoint: CheckpointConfig = field(default_factory=_rl_checkpoint)

    def validate(self, key: str) -> None:
        check = _Ranges(self, key)
        for name in ("learner_ranks", "rollout_ranks", "steps", "prompts_per_step", "ppo_epochs", "bucket_mb",
                     "programs_in_flight", "log_every"):
            check.at_least(name, 1)
        check.at_least("group_size", 2, " (advantages are normalised within a group)")
        check.above("temperature", 0, " (RL samples its programs; 0 is greedy decoding)")
        check.above("clip_eps", 0)
        check.at_least("beta", 0, " (0 skips the reference model)")
        check.above("is_cap", 0)
        check.at_least("overlong_buffer", 0, " (0 = off)")
        check.at_least("overlong_penalty", 0)
        check.at_least("critical_path_weight", 0, " (0 = off)")
        check.above("critical_path_cap", 0)
        check.at_least("line_penalty", 0, " (it is subtracted from a wrong line's advantage)")
        check.at_least("max_staleness", 0, " (0 = synchronous)")
        check.above("server_start_timeout_s", 0)
        check.at_least("server_threads", 0)
        check.at_least("max_server_restarts", 0)
        check.at_least("keep_programs", 0, " (0 = off)")
        check.above("timeout_s", 0)
        check.each_at_least("learner_cpus", 0)
        check.each_at_least("rollout_cpus", 0)


@dataclass
class Config:
    """One run. Sections group the settings of each stage."""

    run_dir: str = "runs/default"
    """Where this run writes everything, including its resolved config."""
    task: TaskConfig = field(default_factory=TaskConfig)
    solver: SolverConfig = field(default_factory=SolverConfig)
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    rl: RLConfig = field(default_factory=RLConfig)

    def validate(self) -> None:
        """Every section's own ranges, sub-sections included (`load_config` runs this)."""
        _validate_sections(self, "")

    def validate_rl(self) -> None:
        """What `apr-ds rl` needs of the other sections and of the rank counts, which a launcher may still set
        after the config is resolved (slurm/plan.py passes rl.rollout_ranks on as an override)."""
        rl, rollout = self.rl, self.rollout
        if rollout.top_p != 1.0 or rollout.top_k != -1:
            # the learner scores tokens under the whole tempered distribution, as the server's log-probs are;
            # a truncated sampler draws from another one (and top_k=1 is greedy decoding)
            raise ConfigError(f"rl needs untruncated sampling: rollout.top_p must be 1 and rollout.top_k -1, "
                              f"got {rollout.top_p} and {rollout.top_k}")
        if not 0 <= rl.overlong_buffer < rollout.max_context or rl.overlong_penalty < 0:
            raise ConfigError(f"rl.overlong_buffer must be in [0, rollout.max_context={rollout.max_context}) and "
                              f"rl.overlong_penalty >= 0, got {rl.overlong_buffer} and {rl.overlong_penalty}")
        if rl.prompts_per_step < rl.rollout_ranks:
            raise ConfigError(f"rl.prompts_per_step={rl.prompts_per_step} gives some of the {rl.rollout_ranks} "
                              f"rollout ranks no work")
        if rl.server == "url" and len(rl.server_urls) != rl.rollout_ranks:
            raise ConfigError(f"rl.server=url needs one URL per rollout rank in rl.server_urls: {rl.rollout_ranks} "
                              f"rollout rank(s), {len(rl.server_urls)} URL(s)")


def _validate_sections(section: Any, key: str) -> None:
    """Sub-sections first, so that a section's own rules may rely on its sub-sections' ranges."""
    for f in dataclasses.fields(section):
        value = getattr(section, f.name)
        if dataclasses.is_dataclass(value):
            _validate_sections(value, f"{key}.{f.name}" if key else f.name)
    if key and hasattr(section, "validate"):
        section.validate(key)


# ---------------------------------------------------------------------------- loading


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options every config-driven command shares: defaults < preset < --config < key=value."""
    parser.add_argument("--preset", default="tiny",
                        help=f"a preset shipped in apr_ds/presets ({', '.join(available_presets())})")
    parser.add_argument("--config", dest="config_file", default=None, help="a YAML file applied after the preset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. task.num_train=1000")


def config_from_args(args: argparse.Namespace) -> Config:
    return load_config(args.preset, args.overrides, args.config_file)


def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | None = None, overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    """Resolve and validate a config; a bad key or value raises ConfigError before anything runs."""
    cfg = Config()
    for mapping in preset_layers(preset) if preset else []:
        apply_mapping(cfg, mapping)
    if config_file:
        apply_mapping(cfg, _read_yaml(Path(config_file)))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. task.num_train=1000)")
        set_value(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    cfg.validate()
    return cfg


def preset_layers(preset: str, named_by: tuple[str, ...] = ()) -> list[dict]:
    """A preset's mappings in the order they apply: its base's (recursively) first, then its own."""
    path = PRESET_DIR / f"{preset}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {preset!r}{_suggest(preset, available_presets())}; "
                          f"presets: {', '.join(available_presets())}")
    if preset in named_by:
        raise ConfigError(f"preset {preset!r} is its own base: {' -> '.join((*named_by, preset))}")
    mapping = _read_yaml(path)
    base = mapping.pop(BASE_KEY, None)
    if base is None:
        return [mapping]
    if not isinstance(base, str):
        raise ConfigError(f"preset {preset!r}: {BASE_KEY} must name one preset, got {base!r}")
    return [*preset_layers(base, (*named_by, preset)), mapping]


def apply_mapping(cfg: Any, mapping: dict, prefix: str = "") -> None:
    """Set every key of a nested mapping on a dataclass, checking names and types."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{prefix or 'config'} must be a mapping of keys to values, got {type(mapping).__name__}")
    for key, value in mapping.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and _is_section(cfg, str(key)):
            apply_mapping(getattr(cfg, key), value, prefix=f"{dotted}.")
        else:
            set_value(cfg, dotted, value, root_prefix=prefix)


def set_value(cfg: Any, dotted: str, value: Any, root_prefix: str = "") -> None:
    """Set `a.b.c = value`; `cfg` is the object that `dotted` (minus root_prefix) is relative to."""
    if dotted in MOVED:
        raise ConfigError(f"{dotted} moved to {MOVED[dotted]}")
    parts = dotted[len(root_prefix):].split(".")
    target = cfg
    for depth, name in enumerate(parts):
        names = [f.name for f in dataclasses.fields(target)]
        if name not in names:
            here = root_prefix + ".".join(parts[:depth])
            candidates = [f"{here}.{n}" if here else n for n in names]
            raise ConfigError(f"unknown config key {dotted!r}{_suggest(dotted, _all_keys(cfg, root_prefix) + candidates)}")
        if depth < len(parts) - 1:
            target = getattr(target, name)
            if not dataclasses.is_dataclass(target):
                raise ConfigError(f"config key {dotted!r}: {'.'.join(parts[:depth + 1])} is a value, not a section")
    name = parts[-1]
    ftype = {f.name: f.type for f in dataclasses.fields(target)}[name]
    hint = typing.get_type_hints(type(target))[name]
    if dataclasses.is_dataclass(hint):
        raise ConfigError(f"config key {dotted!r} is a section; set its fields, e.g. {dotted}.<key>=...")
    setattr(target, name, _coerce(dotted, value, hint, ftype))


def _coerce(key: str, value: Any, hint: Any, spelled: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        allowed = typing.get_args(hint)
        if isinstance(value, str) and value in allowed:
            return value
        raise ConfigError(f"{key} must be {' or '.join(allowed)}, got {value!r}{_suggest(str(value), list(allowed))}")
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg, spelled)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"config key {key!r} expects {spelled}, got {value!r}")
    if origin in (list, tuple):
        (inner, *_) = typing.get_args(hint) or (Any,)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} expects a list, got {value!r} (write key=[1,2,3])")
        return [_coerce(key, v, inner, inner) for v in value]
    if hint is Any:
        return value
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects true or false, got {value!r}")
    if hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"config key {key!r} expects an integer, got {value!r}")
    if hint is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads `1e-3` (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"config key {key!r} expects a number, got {value!r}")
    if hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"config key {key!r} expects a string, got {value!r}")
    raise ConfigError(f"config key {key!r} has an unsupported type {spelled}")


def _is_section(cfg: Any, name: str) -> bool:
    return dataclasses.is_dataclass(cfg) and name in {f.name for f in dataclasses.fields(cfg)} and dataclasses.is_dataclass(getattr(cfg, name))


def _all_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            keys += _all_keys(value, f"{prefix}{f.name}.")
        else:
            keys.append(prefix + f.name)
    return keys


def _suggest(word: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(word, candidates, n=1, cutoff=0.5)
    if not close:  # also try the last component alone: `tsk.seed` -> `task.seed`
        tail = {c.rsplit(".", 1)[-1]: c for c in candidates}
        hit = difflib.get_close_matches(word.rsplit(".", 1)[-1], list(tail), n=1, cutoff=0.6)
        close = [tail[hit[0]]] if hit else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at the top level")
    return data


# ---------------------------------------------------------------------------- saving


def config_to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def save_config(cfg: Config, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config next to a run's outputs, so the run can be repeated exactly."""
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
    return path
