"""Evaluation throughput: `apr-ds eval` with one server against eval.servers=2, side by side on the same problems.

    python tools/bench_eval.py --json tools/results/bench_eval.json        # ~6 minutes on 2 CPU cores
    python tools/bench_eval.py --json out.json --problems 20 --rounds 1 --method sosp

What runs: the shipped cpu-preset model (checkpoints/cpu/apr by default) greedy on the first N problems of the
cpu task's held-out test split, as `make demo` evaluates it, once with one server (1 thread) and once with two
(1 thread each). Rounds alternate 1, 2, 1, 2, ... and the best round of each counts, which damps interference
from other jobs. Each round is a real `apr-ds eval` process; the time is its whole wall time, server start
included, since that is what a user waits for. Accuracy must not change with the number of servers (greedy
decoding), and the JSON records both so a difference shows.
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

from apr_ds.config import load_config  # noqa: E402
from apr_ds.tasks import get_task  # noqa: E402


def write_test_problems(path: Path) -> None:
    """The cpu task's test split (growing task.num_train never changes it, so a small train split is enough)."""
    cfg = load_config("cpu", ["task.num_train=100", "data.workers=1"])
    splits = get_task(cfg).make_splits(workers=1, progress=lambda n: None)
    path.write_text("".join(json.dumps(p.to_json()) + "\n" for p in splits["test"]))


def run_eval(model: str, method: str, problems_file: Path, num_problems: int, servers: int, out_dir: Path) -> dict:
    tag = f"_servers{servers}"
    cmd = [sys.executable, "-m", "apr_ds.cli", "eval", "--preset", "cpu", f"run_dir={out_dir}", "--model", model,
           "--method", method, "--tag", tag, f"eval.problems_file={problems_file}", f"eval.num_problems={num_problems}",
           f"eval.servers={servers}", f"eval.out_dir={out_dir}", "rollout.max_context=768"]
    started = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    wall = time.perf_counter() - started
    if proc.returncode:
        sys.exit(f"bench_eval: `{' '.join(cmd)}` failed:\n{proc.stderr[-3000:]}")
    setting = json.loads((out_dir / f"{method}{tag}.json").read_text())["settings"][0]
    return {"wall_s": wall, "eval_s": setting["wall_s"], "accuracy": setting["accuracy"],
            "programs_per_s": num_problems / setting["wall_s"], "mean_latency_s": setting["mean_latency_s"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--model", default=str(REPO / "checkpoints" / "cpu" / "apr"))
    parser.add_argument("--method", default="apr", choices=["apr", "sosp"])
    parser.add_argument("--problems", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()

    rounds: dict[str, list[dict]] = {"1": [], "2": []}
    with tempfile.TemporaryDirectory() as tmp:
        problems_file = Path(tmp) / "test.jsonl"
        write_test_problems(problems_file)
        for round_index in range(args.rounds):
            for servers in (1, 2):
                result = run_eval(args.model, args.method, problems_file, args.problems, servers, Path(tmp))
                rounds[str(servers)].append(result)
                print(f"round {round_index + 1}, {servers} server(s): {result['wall_s']:.1f} s, "
                      f"accuracy {result['accuracy']:.1%}", flush=True)
    best = {k: min(v, key=lambda r: r["wall_s"]) for k, v in rounds.items()}
    report = {
        "one_server_s": best["1"]["wall_s"], "two_servers_s": best["2"]["wall_s"],
        "speedup": best["1"]["wall_s"] / best["2"]["wall_s"],
        "accuracy_one_server": best["1"]["accuracy"], "accuracy_two_servers": best["2"]["accuracy"],
        "setup": {"model": args.model, "method": args.method, "problems": args.problems, "split": "cpu test",
                  "decoding": "greedy", "max_context": 768, "threads_per_server": 1, "cores": os.cpu_count()},
        "rounds": rounds,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\n{'servers':>8} {'wall s':>8} {'eval s':>8} {'prog/s':>7} {'accuracy':>9} {'ratio':>6}")
    for servers in ("1", "2"):
        r = best[servers]
        print(f"{servers:>8} {r['wall_s']:>8.1f} {r['eval_s']:>8.1f} {r['programs_per_s']:>7.2f} {r['accuracy']:>9.1%} "
              f"{best['1']['wall_s'] / r['wall_s']:>6.2f}")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
