"""Learner throughput: DeepSpeed ZeRO-3 SFT on 2 CPU ranks vs plain single-process torch, same model and batch.

    python tools/bench_learner.py --json runs/bench_learner.json            # ~3-4 min on 2 cores
    python tools/bench_learner.py --json out.json --preset tiny --rounds 1

Both sides train the same Llama preset on the same fixed-length random sequences (no padding), with
AdamW and the same summed-token loss as `apr-ds sft`:
- zero3: `torchrun --standalone --nproc_per_node 2` of this file in worker mode, 1 thread per rank,
  built by apr_ds.learner.engine from ds_configs/zero3_cpu.json (what `apr-ds sft` runs);
- torch: one process, `--torch-threads` threads (default 2: the same two cores), no DeepSpeed.
Rounds alternate torch, zero3, torch, zero3, ... and the best round of each counts, which damps
interference from other jobs on a shared machine. Writes `zero3_tokens_per_s`, `torch_tokens_per_s`,
`ratio`, and per-phase seconds per step (forward, backward, optimizer step) so a miss can be explained.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=False, help="where to write the result")
    parser.add_argument("--preset", default="cpu", help="model preset (apr_ds/model.py)")
    parser.add_argument("--vocab", type=int, default=1117, help="vocabulary size (the domain tokenizer has 1117)")
    parser.add_argument("--seq-len", type=int, default=512)
    parser.add_argument("--global-batch", type=int, default=8, help="sequences per optimizer step (both sides)")
    parser.add_argument("--warmup-steps", type=int, default=3)
    parser.add_argument("--steps", type=int, default=15, help="timed steps per round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--torch-threads", type=int, default=2)
    parser.add_argument("--worker", choices=["zero3"], help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def synthetic_batch(args, rows: int, seed: int):
    import torch
    from apr_ds.data.dataset import IGNORE_INDEX
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, args.vocab, (rows, args.seq_len), generator=g)
    ids[:, 0] = 1
    labels = torch.full_like(ids, IGNORE_INDEX)
    labels[:, :-1] = ids[:, 1:]
    return ids, labels


def sft_config(args, micro_batch: int):
    from apr_ds.config import DeepSpeedConfig, OptimConfig, SFTConfig
    return SFTConfig(global_batch=args.global_batch, steps=1000,
                     deepspeed=DeepSpeedConfig(config="zero3_cpu.json", precision="fp32", micro_batch=micro_batch),
                     optim=OptimConfig(lr=1e-3, schedule="constant", warmup_steps=0))


class PhaseTimer:
    def __init__(self):
        self.seconds = {"forward": 0.0, "backward": 0.0, "step": 0.0}

    def run(self, phase, fn):
        started = time.perf_counter()
        result = fn()
        self.seconds[phase] += time.perf_counter() - started
        return result


def train_steps(forward, backward, step, batches, args, sync=lambda: None):
    """warmup + timed steps; returns (tokens/s, seconds per step by phase)."""
    import torch.nn.functional as F
    from apr_ds.data.dataset import IGNORE_INDEX

    timer = PhaseTimer()
    targets = args.global_batch * (args.seq_len - 1)
    for i in range(args.warmup_steps + args.steps):
        if i == args.warmup_steps:
            sync()
            timer = PhaseTimer()
            started = time.perf_counter()
        for ids, labels in batches:
            logits = timer.run("forward", lambda: forward(ids))
            loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX, reduction="sum")
            timer.run("backward", lambda: backward(loss / targets))
            timer.run("step", step)
    sync()
    elapsed = time.perf_counter() - started
    per_step = {k: v / args.steps for k, v in timer.seconds.items()}
    return args.steps * args.global_batch * args.seq_len / elapsed, per_step


def run_torch(args) -> dict:
    import torch
    from apr_ds.learner.engine import param_groups
    from apr_ds.model import build_model, config_for_preset

    torch.set_num_threads(args.torch_threads)
    sft = sft_config(args, args.global_batch)
    model = build_model(config_for_preset(args.preset, args.vocab, args.seq_len), seed=0).train()
    optim = sft.optim
    opt = torch.optim.AdamW(param_groups(model, optim.weight_decay), lr=optim.lr, betas=(optim.beta1, optim.beta2))
    batches = [synthetic_batch(args, args.global_batch, seed=0)]

    def step():
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)

    tokens_per_s, phases = train_steps(lambda ids: model(input_ids=ids).logits, lambda loss: loss.backward(), step, batches, args)
    return {"tokens_per_s": tokens_per_s, "seconds_per_step": phases, "threads": args.torch_threads}


def zero3_worker(args) -> None:
    """One rank of the ZeRO-3 side (run under torchrun)."""
    import torch
    import torch.distributed as dist
    from apr_ds.learner.engine import build_engine, init_distributed, load_ds_config, world_size_from_env
    from apr_ds.model import build_model, config_for_preset

    world = world_size_from_env()
    sft = sft_config(args, args.global_batch // world)
    ds_config = load_ds_config(sft.deepspeed, sft.optim, sft.global_batch, world, "sft")
    init_distributed()
    rank = dist.get_rank()
    engine = build_engine(build_model(config_for_preset(args.preset, args.vocab, args.seq_len), seed=0), sft.optim, sft.steps,
                          ds_config)
    ids, labels = synthetic_batch(args, args.global_batch, seed=0)
    mine = [(ids[rank::world], labels[rank::world])]  # each rank: its half of the same global batch
    # engine.backward scales by 1/accumulation and ZeRO averages over ranks; scale back to the global per-token mean
    tokens_per_s, phases = train_steps(lambda x: engine(input_ids=x).logits, lambda loss: engine.backward(loss * world),
                                       engine.step, mine, args, sync=dist.barrier)
    if rank == 0:
        Path(args.worker_out).write_text(json.dumps({"tokens_per_s": tokens_per_s, "seconds_per_step": phases,
                                                     "ranks": world, "threads_per_rank": torch.get_num_threads()}))
    dist.destroy_process_group()


def run_zero3(args) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "zero3.json"
        cmd = [str(Path(sys.executable).parent / "torchrun"), "--standalone", "--nproc_per_node", "2", __file__,
               "--worker", "zero3", "--worker-out", str(out), "--preset", args.preset, "--vocab", str(args.vocab),
               "--seq-len", str(args.seq_len), "--global-batch", str(args.global_batch),
               "--warmup-steps", str(args.warmup_steps), "--steps", str(args.steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore::FutureWarning", "DS_ACCELERATOR": "cpu",
               "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
        try:
            log, _ = proc.communicate(timeout=480)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, 9)
                proc.wait()
        if proc.returncode != 0 or not out.is_file():
            raise SystemExit(f"zero3 worker failed (exit {proc.returncode}):\n{log[-3000:]}")
        return json.loads(out.read_text())


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker == "zero3":
        zero3_worker(args)
        return 0
    rounds = {"torch": [], "zero3": []}
    for r in range(args.rounds):
        rounds["torch"].append(run_torch(args))
        print(f"round {r + 1}: torch {rounds['torch'][-1]['tokens_per_s']:,.0f} tok/s", flush=True)
        rounds["zero3"].append(run_zero3(args))
        print(f"round {r + 1}: zero3 {rounds['zero3'][-1]['tokens_per_s']:,.0f} tok/s", flush=True)
    best = {side: max(results, key=lambda x: x["tokens_per_s"]) for side, results in rounds.items()}
    result = {
        "zero3_tokens_per_s": best["zero3"]["tokens_per_s"],
        "torch_tokens_per_s": best["torch"]["tokens_per_s"],
        "ratio": best["zero3"]["tokens_per_s"] / best["torch"]["tokens_per_s"],
        "zero3_seconds_per_step": best["zero3"]["seconds_per_step"],
        "torch_seconds_per_step": best["torch"]["seconds_per_step"],
        "setup": {"preset": args.preset, "vocab": args.vocab, "seq_len": args.seq_len, "global_batch": args.global_batch,
                  "steps": args.steps, "zero3": "2 ranks x 1 thread, gloo, ds_configs/zero3_cpu.json",
                  "torch": f"1 process x {args.torch_threads} threads"},
        "rounds": rounds,
    }
    print(f"zero3 {result['zero3_tokens_per_s']:,.0f} tok/s, torch {result['torch_tokens_per_s']:,.0f} tok/s, "
          f"ratio {result['ratio']:.2f}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
