"""Typed configuration: dataclasses, YAML presets shipped in the package, `key=value` overrides.

Precedence is defaults < preset YAML < `--config FILE` < `key=value` on the command line.
Each default is written exactly once, here, in the dataclass field.

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
from typing import Any

import yaml

from apr_ds.errors import UserError

PRESET_DIR = Path(__file__).parent / "presets"


class ConfigError(UserError, ValueError):
    """A config key, value or file that cannot be used. The message names the key and the fix."""


@dataclass
class TaskConfig:
    """The problem distribution and its splits."""

    name: str = "countdown"
    """Which task. Only `countdown` exists so far."""
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
    """Fraction of the target range held out of train/val/test for `test_unseen_targets`."""
    seed: int = 42


@dataclass
class SolverConfig:
    """The symbolic solvers that write SFT traces (apr-reference §2.5)."""

    heuristic: str = "mult"
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
    """Chance that the APR main thread spawns at an eligible expansion (>= 2 non-terminal children).
    The reference code uses 0.9; the paper's text says 10%. 0.9 reproduces the released data."""
    max_spawn_depth: int = 1
    """1 = only the main thread spawns (APR). 2+ lets children spawn too (nested; off by default)."""


@dataclass
class DataConfig:
    """Turning solver runs into SFT sequences and token files."""

    workers: int = 2
    """Processes for problem generation and solving. Output is identical for any value."""
    max_seq_len: int = 4096
    """Sequences longer than this (in tokens, with bos/eos) are handled by `over_length`."""
    over_length: str = "drop"
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


@dataclass
class ModelConfig:
    """The Llama model (apr_ds/model.py presets; apr-reference §3)."""

    preset: str = "tiny"
    """Named shape: `tiny` (~1M params), `cpu` (~2M), `paper` (18 layers, d=1024: 228M non-embedding)."""
    context: int | None = None
    """Maximum sequence length in tokens; None = the preset's (tiny 512, cpu 768, paper 4096). Longer sequences are truncated."""


@dataclass
class SFTConfig:
    """Supervised fine-tuning on solver traces with DeepSpeed ZeRO-3 (apr-reference §3). Writes {run_dir}/sft/{method}/."""

    method: str = "sosp"
    """Which sequences to train on: `sosp` (SoS+) or `apr`."""
    ds_config: str = "zero3.json"
    """DeepSpeed config: a file name in ds_configs/ (`zero3.json` bf16 GPUs, `zero3_cpu.json`, `zero3_offload.json`) or a path."""
    precision: str = "bf16"
    """`fp32` or `bf16`. Must agree with the DeepSpeed config's `bf16.enabled`."""
    global_batch: int = 256
    """Sequences per optimizer step over all ranks. Must equal micro_batch x accumulation x world size."""
    micro_batch: int = 8
    """Sequences per rank per forward/backward. Accumulation steps = global_batch / (micro_batch x world size)."""
    steps: int = 19_000
    """Optimizer steps in the whole run (the cosine schedule spans them)."""
    lr: float = 5e-5
    """Peak learning rate, reached at the end of warmup."""
    warmup_start_lr: float = 5e-6
    """Learning rate of the first step; rises linearly to `lr` over `warmup_steps`."""
    warmup_steps: int = 1
    min_lr: float = 5e-7
    """Cosine decay from `lr` ends here, at step `steps`."""
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 0.01
    """AdamW decoupled weight decay, applied to matrices (embeddings included), not to RMSNorm gains."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this; 0 turns clipping off."""
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
    save_every: int = 1000
    """Steps between sharded DeepSpeed checkpoints; a final one is always written."""
    keep_last: int = 3
    """Complete checkpoints kept; older ones are deleted after a new one is complete."""


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
    dtype: str = "float32"
    """Weights and KV dtype: float32, bfloat16, or auto (the checkpoint's). bf16 is slow on AVX2-only CPUs."""
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
    """True: a spawn whose node's numbers do not follow from its parent fails the program. False (the reference
    runtime): the child starts from the state the parent claimed; the strict verifier still replays the
    solution path from the prompt, so a wrong step can never count as a solve."""
    sequential_children: bool = False
    """Run a spawn's children one after another instead of concurrently (for measuring what concurrency buys)."""
    concurrency: int = 16
    """Programs in flight at once against one server."""


@dataclass
class EvalConfig:
    """`apr-ds eval`: which problems, which settings to sweep, where results go."""

    split: str = "test"
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


METHODS = ("sosp", "apr")
"""The two trace formats: what `apr-ds data` writes, `sft` trains on and `rl` samples (sft.method, rl.method)."""
RL_LOSS_AGGS = ("token_mean", "token_sum")
RL_ADVANTAGES = ("group_norm", "reward")
RL_SERVERS = ("ours", "sglang", "url")


@dataclass
class RLConfig:
    """`apr-ds rl`: GRPO on spawn/join programs with ZeRO-3 learner ranks and separate rollout ranks (apr-reference §4)."""

    init_model: str = ""
    """The SFT model (a Hugging Face directory) RL starts from and the KL reference; empty = {run_dir}/sft/{method}/hf."""
    method: str = "apr"
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
    lr: float = 1e-5
    weight_decay: float = 0.0
    clip_eps: float = 0.2
    beta: float = 0.001
    """k3 KL weight against the frozen SFT model (APR 0.001, SoS+ 0.01); 0 skips the reference model."""
    is_cap: float = 2.0
    """Cap of the behaviour->proximal importance weight (decoupled PPO)."""
    loss_agg: str = "token_mean"
    """How a sequence's token losses add up. `token_mean` (APR's trainer): their mean, so a token's weight shrinks
    as its thread grows, and a long failed thread is penalised less per token than a short one. `token_sum`
    (Dr. GRPO): their sum over rollout.max_context, a constant, so every generated token weighs the same. On the
    cpu task the sum did worse for both methods (docs/results.md, configuration 5)."""
    overlong_buffer: int = 0
    """DAPO's soft overlong punishment: a program whose longest thread ends within this many tokens of
    rollout.max_context loses reward linearly, up to rl.overlong_penalty at the limit (where the window cuts it).
    0 = off: APR's binary reward."""
    overlong_penalty: float = 1.0
    line_penalty: float = 0.0
    """Subtracted from the advantage of the tokens a checked line got wrong (an `Exploring Operation`'s impossible or
    repeated operation, wrong result or wrong resulting list; a `Generated Node`'s wrong target; all of a state,
    operation or node line that does not parse), whatever the program's outcome (learner/line_penalty.py).
    0 = off: the outcome alone, as APR."""
    advantage: str = "group_norm"
    """`group_norm` (GRPO, APR's trainer): (R - group mean) / group std. `reward`: A = R, REINFORCE without a
    baseline, which with the 0/1 reward trains only on solved programs (rejection-sampling fine-tuning done on-policy)."""
    ppo_epochs: int = 2
    """Optimizer steps on each batch (APR: 2 full-batch steps)."""
    micro_batch: int = 4
    """Sequences per forward/backward on a learner rank."""
    grad_clip: float = 1.0
    max_staleness: int = 1
    """eta: a program sampled with weight version v is used by learner step >= v only while step - v <= eta;
    older ones are dropped and counted. 0 = synchronous (on the same code path)."""
    ds_config: str = "zero3_cpu.json"
    precision: str = "fp32"
    bucket_mb: int = 32
    """Weight-sync bucket size: parameters gathered and broadcast together."""
    server: str = "ours"
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
    save_every: int = 10
    keep_last: int = 2
    timeout_s: float = 600.0
    """Collective and message timeout: a rank silent this long ends the job with a message."""
    learner_cpus: list[int] = field(default_factory=list)
    """Pin learner ranks to these CPU cores (empty = no pinning), as on a cluster where roles own different devices."""
    rollout_cpus: list[int] = field(default_factory=list)
    """Pin rollout ranks, and the servers they start, to these CPU cores."""


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


# ---------------------------------------------------------------------------- loading


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """The config options every config-driven command shares: defaults < preset < --config < key=value."""
    parser.add_argument("--preset", default="tiny", help="a preset shipped in apr_ds/presets (tiny, cpu, paper)")
    parser.add_argument("--config", dest="config_file", default=None, help="a YAML file applied after the preset")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. task.num_train=1000")


def config_from_args(args: argparse.Namespace):
    return load_config(args.preset, args.overrides, args.config_file)



def available_presets() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(preset: str | None = None, overrides: list[str] | None = None, config_file: str | None = None) -> Config:
    cfg = Config()
    if preset:
        path = PRESET_DIR / f"{preset}.yaml"
        if not path.is_file():
            raise ConfigError(f"unknown preset {preset!r}{_suggest(preset, available_presets())}; presets: {', '.join(available_presets())}")
        apply_mapping(cfg, _read_yaml(path))
    if config_file:
        apply_mapping(cfg, _read_yaml(Path(config_file)))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. task.num_train=1000)")
        set_value(cfg, key.strip(), yaml.safe_load(raw) if raw.strip() else "")
    return cfg


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
