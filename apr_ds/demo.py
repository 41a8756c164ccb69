"""`apr-ds demo`: the whole pipeline on the tiny preset, end to end, on one CPU machine (about 10-15 minutes).

    apr-ds demo                      # what `make demo` runs; writes runs/demo/
    apr-ds demo run_dir=/tmp/demo

Stages, each a real `apr-ds` command in its own process (so each one's launcher and cleanup are the real ones):
1. data   problems, solver traces, SFT sequences, tokenizer
2. sft    SoS+ and APR, each on 2 DeepSpeed ZeRO-3 ranks under mpiexec
3. rl     a few steps of asynchronous GRPO from the APR model (1 learner + 1 rollout rank with its server)
4. eval   SoS+, APR, APR+RL greedy and best-of-4 SoS+ on held-out test problems
5. report plots and a table

At this budget the models learn the trace language but rarely solve a problem (cpu-scale-probe §5): the demo
proves the pipeline, not the method. TensorBoard: `tensorboard --logdir runs/demo`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from apr_ds.errors import UserError


def add_arguments(parser) -> None:
    from apr_ds.cli import add_config_arguments
    add_config_arguments(parser)
    parser.set_defaults(preset="tiny")
    parser.add_argument("--problems", type=int, default=50, help="test problems per evaluation")


def _run(stage: str, args: list[str], env: dict | None = None) -> float:
    print(f"\n=== {stage}: apr-ds {' '.join(args)}", flush=True)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", *args], env={**os.environ, **(env or {})})
    if proc.returncode:
        raise UserError(f"demo stage '{stage}' failed (exit code {proc.returncode}); its output is above")
    return time.time() - started


def _mpiexec() -> str:
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    return local if os.path.exists(local) else "mpiexec"


def main(args) -> int:
    from apr_ds.cli import config_from_args
    cfg = config_from_args(args)
    run_dir = Path(cfg.run_dir if cfg.run_dir != "runs/tiny" else "runs/demo")
    common = ["--preset", args.preset, f"run_dir={run_dir}", *args.overrides]
    one_thread = {"OMP_NUM_THREADS": "1"}
    started, times = time.time(), {}
    times["data"] = _run("data", ["data", *common])
    for method in ("sosp", "apr"):
        print(f"\n=== sft {method}: 2 ZeRO-3 ranks", flush=True)
        t0 = time.time()
        proc = subprocess.run([_mpiexec(), "-n", "2", sys.executable, "-m", "apr_ds.cli", "sft", *common,
                               f"sft.method={method}"], env={**os.environ, **one_thread})
        if proc.returncode:
            raise UserError(f"demo stage 'sft {method}' failed (exit code {proc.returncode}); its output is above")
        times[f"sft_{method}"] = time.time() - t0
    times["rl"] = _run("rl", ["rl", *common, "rl.method=apr", "rl.steps=4", "rl.prompts_per_step=4", "rl.group_size=4",
                              "rollout.max_context=512"], one_thread)
    evals = [("sosp", run_dir / "sft/sosp/hf", "_sft", []), ("apr", run_dir / "sft/apr/hf", "_sft", []),
             ("apr", run_dir / "rl/hf", "_rl", []), ("bon", run_dir / "sft/sosp/hf", "_sft", ["eval.n=4", "eval.temperatures=[1.0]"])]
    for method, model, tag, extra in evals:
        times[f"eval_{method}{tag}"] = _run(f"eval {method}{tag}", [
            "eval", *common, "--model", str(model), "--method", method, "--tag", tag, f"eval.num_problems={args.problems}",
            "rollout.max_context=512", *extra], one_thread)
    times["report"] = _run("report", ["report", str(run_dir), "--out", str(run_dir / "report")])
    print_summary(run_dir, times, time.time() - started)
    return 0


def print_summary(run_dir: Path, times: dict, total_s: float) -> None:
    rows = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        result = json.loads(path.read_text())
        s = result["settings"][0]
        extra = f"  pass@4 {s['pass_at']['4']:.0%} cons@4 {s['cons_at']['4']:.0%}" if "pass_at" in s else ""
        rows.append(f"  {path.stem:<10} {s['accuracy']:>7.1%} {s['mean_total_tokens']:>9.0f} {s['mean_longest_thread']:>8.0f} "
                    f"{s['mean_latency_s']:>8.2f} {s['children_per_spawn']:>8.2f}{extra}")
    sft = {}
    for m in ("sosp", "apr"):  # the last row that has a validation loss
        for line in (run_dir / "sft" / m / "scalars.jsonl").read_text().splitlines():
            row = json.loads(line)
            sft[m] = row if "val/loss" in row else sft.get(m, {})
    rl_rows = [json.loads(x) for x in (run_dir / "rl" / "scalars.jsonl").read_text().splitlines()]
    print("\n" + "=" * 78)
    print(f"apr-ds demo: finished in {total_s / 60:.1f} min (fresh tiny run; all numbers below come from it)")
    print("  stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    print("  SFT final val loss: " + ", ".join(f"{m} {sft[m].get('val/loss', float('nan')):.3f}" for m in sft))
    print("  RL reward by step: " + " ".join(f"{r['rollout/reward']:.2f}" for r in rl_rows))
    print(f"\n  {'eval':<10} {'acc':>7} {'tokens':>9} {'longest':>8} {'lat s':>8} {'ch/spawn':>8}")
    print("\n".join(rows))
    failures = {}
    for path in sorted((run_dir / "eval").glob("*.json")):
        for reason, count in json.loads(path.read_text())["settings"][0]["failures"].items():
            failures[reason[:70]] = failures.get(reason[:70], 0) + count
    if failures:
        print("  most common failures: " + "; ".join(f"{n}x {r}" for r, n in sorted(failures.items(), key=lambda x: -x[1])[:3]))
    print("\n  The tiny budget teaches the trace format, not arithmetic: accuracy near 0% is expected here.")
    print(f"  report:      {run_dir / 'report'}/report.md and *.png")
    print(f"  TensorBoard: tensorboard --logdir {run_dir}")
    print("=" * 78)
