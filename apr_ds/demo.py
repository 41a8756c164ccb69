"""`apr-ds demo`: the whole pipeline end to end on one CPU machine, then the shipped cpu-preset models (<= 20 min).

    apr-ds demo                      # what `make demo` runs; writes runs/demo/
    apr-ds demo run_dir=/tmp/demo

Part 1, a fresh tiny run (each stage a real `apr-ds` command in its own process, so each one's launcher and
cleanup are the real ones):
1. data   problems, solver traces, SFT sequences, tokenizer
2. sft    SoS+ and APR, each on 2 DeepSpeed ZeRO-3 ranks under mpiexec
3. rl     a few steps of asynchronous GRPO from the APR model (1 learner + 1 rollout rank with its server)
4. eval   SoS+, APR, APR+RL greedy and best-of-4 SoS+ on held-out test problems
At this budget the models learn the trace language but solve almost nothing (cpu-scale-probe §5): part 1
proves the pipeline, not the method.

Part 2, the models shipped in checkpoints/cpu/ (trained offline by tools/reproduce_cpu.sh, about 2 hours
per method; docs/results.md): the cpu task's held-out test problems (the same split docs/results.md reports
on), SoS+, APR, APR+RL and best-of-4 SoS+ at context windows 512 and 768, and a few RL steps from the
shipped APR model. Then one report per part and a summary that says which numbers come from where.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from apr_ds.cluster.roles import mpiexec_command
from apr_ds.errors import UserError

SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "cpu"
# Both cores decode during evaluation: 1.2x faster than one server here (tools/results/bench_eval.json).
EVAL_ON_BOTH_CORES = ["eval.servers=2"]


def add_arguments(parser) -> None:
    from apr_ds.config import add_config_arguments
    add_config_arguments(parser)
    parser.set_defaults(preset="tiny")
    parser.add_argument("--sft-steps", type=int, default=250, help="SFT steps per method of the fresh tiny run")
    parser.add_argument("--problems", type=int, default=50, help="test problems per evaluation of the fresh tiny run")
    parser.add_argument("--shipped", default=str(SHIPPED), help="folder of the shipped cpu-preset models")
    parser.add_argument("--shipped-problems", type=int, default=100, help="test problems per shipped-model evaluation")
    parser.add_argument("--shipped-bon-problems", type=int, default=50, help="test problems for best-of-4 (4 programs each)")
    parser.add_argument("--shipped-rl-steps", type=int, default=3, help="RL steps from the shipped APR model")
    parser.add_argument("--skip-shipped", action="store_true", help="only the fresh tiny run")


def _run(stage: str, args: list[str], env: dict | None = None) -> float:
    print(f"\n=== {stage}: apr-ds {' '.join(args)}", flush=True)
    started = time.time()
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", *args], env={**os.environ, **(env or {})})
    if proc.returncode:
        raise UserError(f"demo stage '{stage}' failed (exit code {proc.returncode}); its output is above")
    return time.time() - started


def main(args) -> int:
    from apr_ds.config import config_from_args
    cfg = config_from_args(args)
    run_dir = Path(cfg.run_dir if cfg.run_dir != "runs/tiny" else "runs/demo")
    shipped = Path(args.shipped)
    if not args.skip_shipped and not (shipped / "MANIFEST.json").is_file():  # before 10 minutes of part 1, not after
        raise UserError(f"no shipped checkpoints at {shipped} (MANIFEST.json); pass --shipped DIR or --skip-shipped")
    started, times = time.time(), {}
    fresh_pipeline(run_dir / "tiny", args, times)
    if not args.skip_shipped:
        shipped_models(run_dir / "cpu", shipped, args, times)
    print_summary(run_dir, times, time.time() - started)
    return 0


def fresh_pipeline(run_dir: Path, args, times: dict) -> None:
    common = ["--preset", args.preset, f"run_dir={run_dir}", *args.overrides]
    one_thread = {"OMP_NUM_THREADS": "1"}
    times["data"] = _run("data", ["data", *common])
    for method in ("sosp", "apr"):
        print(f"\n=== sft {method}: 2 ZeRO-3 ranks", flush=True)
        t0 = time.time()
        proc = subprocess.run(mpiexec_command(2, ["sft", *common, f"sft.method={method}", f"sft.steps={args.sft_steps}"]),
                              env={**os.environ, **one_thread})
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
            "rollout.max_context=512", *EVAL_ON_BOTH_CORES, *extra], one_thread)
    times["report"] = _run("report", ["report", str(run_dir), "--out", str(run_dir / "report")])


def shipped_models(run_dir: Path, shipped: Path, args, times: dict) -> None:
    """Evaluate the shipped cpu-preset models; their test split is regenerated (growing task.num_train never
    changes val/test, so a small train split gives the very test problems of docs/results.md)."""
    common = ["--preset", "cpu", f"run_dir={run_dir}"]
    one_thread = {"OMP_NUM_THREADS": "1"}
    times["cpu_data"] = _run("data (cpu task, for the shipped models)", ["data", *common, "task.num_train=2000"])
    windows = ["rollout.max_context=768", "eval.context_windows=[512,768]", *EVAL_ON_BOTH_CORES]
    greedy = f"eval.num_problems={args.shipped_problems}"
    evals = [("sosp", "sosp", "_shipped", [greedy]), ("apr", "apr", "_shipped", [greedy]),
             ("apr", "apr_rl", "_rl_shipped", [greedy]),
             ("bon", "sosp", "_shipped", [f"eval.num_problems={args.shipped_bon_problems}", "eval.n=4", "eval.temperatures=[0.7]"])]
    for method, model, tag, extra in evals:
        times[f"eval_{method}{tag}"] = _run(f"eval shipped {model} ({method})", [
            "eval", *common, "--model", str(shipped / model), "--method", method, "--tag", tag, *windows, *extra],
            one_thread)
    times["rl_shipped"] = _run("rl from the shipped APR model", [
        "rl", *common, f"rl.init_model={shipped / 'apr'}", "rl.method=apr", f"rl.steps={args.shipped_rl_steps}",
        "rl.prompts_per_step=4", "rl.group_size=4", "rollout.max_context=768", "rl.checkpoint.save_every=1000"], one_thread)
    times["cpu_report"] = _run("report (shipped models)", ["report", str(run_dir), "--out", str(run_dir / "report")])


def _eval_rows(run_dir: Path, windows: list[str] | None = None) -> list[str]:
    rows = []
    for path in sorted((run_dir / "eval").glob("*.json")):
        s = json.loads(path.read_text())["settings"][0]
        by_window = "".join(f" {s['cumulative_accuracy'].get(w, float('nan')):>7.1%}" for w in windows or [])
        extra = f"  pass@4 {s['pass_at']['4']:.0%} cons@4 {s['cons_at']['4']:.0%}" if "pass_at" in s else ""
        rows.append(f"  {path.stem:<14} {s['problems']:>4} {s['accuracy']:>7.1%}{by_window} {s['mean_total_tokens']:>7.0f} "
                    f"{s['mean_longest_thread']:>7.0f} {s['mean_latency_s']:>6.2f} {s['children_per_spawn']:>8.2f}{extra}")
    return rows


def _rewards(run_dir: Path) -> str:
    path = run_dir / "rl" / "scalars.jsonl"
    if not path.is_file():
        return "(no RL run)"
    return " ".join(f"{json.loads(x)['rollout/reward']:.2f}" for x in path.read_text().splitlines())


def print_summary(run_dir: Path, times: dict, total_s: float) -> None:
    tiny, cpu = run_dir / "tiny", run_dir / "cpu"
    sft = {}
    for m in ("sosp", "apr"):  # the last row that has a validation loss
        for line in (tiny / "sft" / m / "scalars.jsonl").read_text().splitlines():
            row = json.loads(line)
            sft[m] = row if "val/loss" in row else sft.get(m, {})
    print("\n" + "=" * 86)
    print(f"apr-ds demo: finished in {total_s / 60:.1f} min")
    print("  stage times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))
    print("\nPart 1: FRESH tiny run, trained just now (SFT, 4 RL steps); greedy, context 512")
    print("  SFT final val loss: " + ", ".join(f"{m} {sft[m].get('val/loss', float('nan')):.3f}" for m in sft))
    print(f"  RL reward by step: {_rewards(tiny)}")
    print(f"\n  {'eval':<14} {'n':>4} {'acc':>7} {'tokens':>7} {'longest':>7} {'lat s':>6} {'ch/spawn':>8}")
    print("\n".join(_eval_rows(tiny)))
    print("  The tiny budget teaches the trace format, not arithmetic: accuracy near 0% is expected here.")
    if (cpu / "eval").is_dir():
        print("\nPart 2: SHIPPED cpu-preset models (checkpoints/cpu, trained offline: docs/results.md); held-out test")
        print(f"\n  {'eval':<14} {'n':>4} {'acc':>7} {'@512':>7} {'@768':>7} {'tokens':>7} {'longest':>7} {'lat s':>6} {'ch/spawn':>8}")
        print("\n".join(_eval_rows(cpu, ["512", "768"])))
        print(f"  RL from the shipped APR model, reward by step: {_rewards(cpu)}")
    print(f"\n  reports:     {tiny / 'report'}/report.md" + (f", {cpu / 'report'}/report.md" if (cpu / "eval").is_dir() else ""))
    pages = sorted((cpu / "report" / "view").glob("apr*.html")) or sorted((tiny / "report" / "view").glob("apr*.html"))
    if pages:
        print(f"  programs:    {pages[0]} (open it in a browser: `apr-ds view`'s page of every program)")
    print(f"  TensorBoard: tensorboard --logdir {run_dir}")
    print("=" * 86)
