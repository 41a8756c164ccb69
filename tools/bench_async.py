"""Benchmark asynchronous RL: steps per hour at eta = 0, 1, 2, and weight-sync time against a memory copy.

    python tools/bench_async.py --json runs/bench_async.json        # ~10 minutes on 2 CPU cores

Tiny preset, one learner rank pinned to core 0 and one rollout rank (and its server) pinned to core 1, as on
a cluster where the roles own different devices; otherwise both fight for the same cores and the comparison
measures nothing. One small SFT model is trained first (3-number Countdown, ~1M parameters), then the same
RL run is repeated with rl.max_staleness = 0, 1, 2. Steps per hour come from the learner's own clock
(time/elapsed_s) between the first and the last step, so start-up is not counted.
Weight sync: the learner's sync/ms (gather + broadcast + the server loading the weights) against copying the
same number of bytes in memory in this process.

Overlap can at best turn a synchronous step of (rollout + train) into max(rollout, train), so the speedup's
ceiling is (rollout + train) / max(rollout, train), printed as `ceiling` from the eta = 0 run. The default
workload uses one PPO epoch per batch (`--ppo-epochs 1`), which makes training and rollout take about as long
on this machine, the way a deployment sizes rollout devices against learner devices; with 2 epochs training
takes about twice the rollout time and the ceiling drops to ~1.6x.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLI = [sys.executable, "-m", "apr_ds.cli"]


def run(cmd, env=None, timeout=1200):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode:
        sys.exit(f"failed: {' '.join(cmd)}\n{proc.stderr[-3000:]}")
    return proc


def rl_rates(run_dir: Path, eta: int, steps: int, cpus: bool, ppo_epochs: int) -> dict:
    out = run_dir / f"eta{eta}"
    for part in ("data", "sft"):
        (out / part).parent.mkdir(parents=True, exist_ok=True)
        if not (out / part).exists():
            os.symlink(run_dir / part, out / part)
    pin = ["rl.learner_cpus=[0]", "rl.rollout_cpus=[1]"] if cpus else []
    started = time.time()
    run(CLI + ["rl", "--preset", "tiny", f"run_dir={out}", "rl.method=apr", f"rl.steps={steps}", f"rl.max_staleness={eta}",
               "rl.prompts_per_step=4", "rl.group_size=4", "rl.checkpoint.save_every=1000", "rl.programs_in_flight=16",
               "rollout.max_context=384", "rl.server_threads=1", f"rl.ppo_epochs={ppo_epochs}", *pin],
        env={"OMP_NUM_THREADS": "1"})
    rows = [json.loads(x) for x in (out / "rl" / "scalars.jsonl").read_text().splitlines()]
    span = rows[-1]["time/elapsed_s"] - rows[0]["time/elapsed_s"]
    return {"steps_per_hour": (len(rows) - 1) / span * 3600, "wall_s": time.time() - started,
            "sync_ms": statistics.median(r["sync/ms"] for r in rows), "sync_bytes": rows[-1]["sync/bytes"],
            "learner_idle": statistics.mean(r["learner/idle_fraction"] for r in rows[1:]),
            "rollout_idle": rows[-1]["rollout/idle_fraction"], "staleness_mean": statistics.mean(r["staleness/mean"] for r in rows),
            "dropped_groups": rows[-1]["staleness/dropped_groups"],
            # where a step's time goes: training (forward/backward/step) and weight sync, both on the learner
            "learner_train_s": statistics.mean(r["learner/seconds"] for r in rows[1:]),
            "step_s": span / max(len(rows) - 1, 1)}


def memcpy_seconds(nbytes: int, repeats: int = 20) -> float:
    import torch
    source = torch.ones(int(nbytes) // 4, dtype=torch.float32)
    target = torch.empty_like(source)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        target.copy_(source)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--no-pin", action="store_true", help="do not pin roles to cores")
    parser.add_argument("--ppo-epochs", type=int, default=1, help="optimizer passes per batch (rl.ppo_epochs)")
    args = parser.parse_args()
    if os.cpu_count() < 2 and not args.no_pin:
        sys.exit("pinning needs 2 cores; pass --no-pin")
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        run(CLI + ["data", "--preset", "tiny", f"run_dir={run_dir}", "task.num_train=2000", "data.workers=2"])
        run(CLI + ["sft", "--preset", "tiny", f"run_dir={run_dir}", "sft.method=apr", "sft.steps=150", "sft.eval_every=1000",
                   "sft.checkpoint.save_every=1000", "sft.probe_problems=0"], env={"OMP_NUM_THREADS": "2"})
        results = {}
        for eta in (0, 1, 2):
            results[str(eta)] = rl_rates(run_dir, eta, args.steps, not args.no_pin, args.ppo_epochs)
            print(f"eta={eta}: {results[str(eta)]['steps_per_hour']:.0f} steps/hour", flush=True)
    sync_s = statistics.median(r["sync_ms"] for r in results.values()) / 1000
    copy_s = memcpy_seconds(results["0"]["sync_bytes"])
    sync0 = results["0"]["sync_ms"] / 1000
    train0 = results["0"]["learner_train_s"]
    rollout0 = max(results["0"]["step_s"] - train0 - sync0, 1e-9)
    ceiling = (rollout0 + train0 + sync0) / (max(rollout0, train0) + sync0)
    out = {"steps_per_hour": {k: v["steps_per_hour"] for k, v in results.items()},
           "ceiling_eta1": ceiling, "ppo_epochs": args.ppo_epochs,
           "async_speedup_eta1": results["1"]["steps_per_hour"] / results["0"]["steps_per_hour"],
           "async_speedup_eta2": results["2"]["steps_per_hour"] / results["0"]["steps_per_hour"],
           "weight_sync_s": sync_s, "memcpy_s": copy_s, "sync_over_memcpy": sync_s / copy_s,
           "sync_bytes": results["0"]["sync_bytes"], "pinned": not args.no_pin, "details": results}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'eta':>4} {'steps/hour':>10} {'x eta0':>7} {'step s':>7} {'train s':>7} {'learner idle':>12} {'rollout idle':>12} "
          f"{'staleness':>9} {'dropped':>7}")
    for eta, r in results.items():
        print(f"{eta:>4} {r['steps_per_hour']:>10.0f} {r['steps_per_hour'] / results['0']['steps_per_hour']:>7.2f} "
              f"{r['step_s']:>7.2f} {r['learner_train_s']:>7.2f} {r['learner_idle']:>12.1%} {r['rollout_idle']:>12.1%} "
              f"{r['staleness_mean']:>9.2f} {r['dropped_groups']:>7.0f}")
    print(f"ceiling of the speedup for this workload (eta=0: rollout {rollout0:.2f} s, train {train0:.2f} s): {ceiling:.2f}x")
    print(f"weight sync {sync_s * 1000:.1f} ms for {out['sync_bytes'] / 1e6:.1f} MB; memcpy {copy_s * 1000:.2f} ms; "
          f"ratio {out['sync_over_memcpy']:.1f}x")


if __name__ == "__main__":
    main()
