"""Benchmark the spawn/join runtime: APR vs SoS+ latency per problem, and what concurrent children buy.

    python tools/bench_runtime.py --json runs/bench_runtime.json        # ~5 minutes on 2 CPU cores

One checkpoint set, one run, one server:
- the "models" write exactly the symbolic solvers' traces (the server in replay mode), while a random
  ~5M-parameter Llama still runs its forward pass at every step (`engine.replay_compute`), so timings
  are those of a 5M model and accuracy is the solver's own (strict verifier, per-thread context limit);
- problems come from the `cpu` preset's task (4 numbers in 1..20, targets 10..30, small beams);
- each program runs alone (one problem at a time), so latency is per problem, as in the paper:
  1. SoS+: one sequential thread;
  2. APR: children of a spawn run concurrently (the server batches them);
  3. APR with the same programs' children run one after another.

Writes apr_latency_s, sosp_latency_s, apr_accuracy, sosp_accuracy, children_sequential_latency_s and
concurrency_speedup (sequential-children latency / concurrent-children latency), plus token counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from apr_ds.config import RolloutConfig, load_config  # noqa: E402
from apr_ds.data.build import build  # noqa: E402
from apr_ds.engine.toy import save_random_model  # noqa: E402
from apr_ds.eval.metrics import summarize  # noqa: E402
from apr_ds.rollout.client import RolloutClient  # noqa: E402
from apr_ds.rollout.runtime import ProgramRunner  # noqa: E402
from apr_ds.rollout.server_proc import ServerProcess  # noqa: E402
from apr_ds.tasks import get_task  # noqa: E402
from apr_ds.tasks.countdown import Problem  # noqa: E402


def prepare(work: Path, num_problems: int):
    cfg = load_config("cpu", [f"run_dir={work}", "task.num_train=400", "task.num_val=4", "task.num_test=4",
                              "task.num_test_unseen_targets=4", "data.workers=2"])
    build(cfg)
    data = work / "data"
    rows = {m: [json.loads(x) for x in (data / "sequences" / m / "train.jsonl").read_text().splitlines()] for m in ("sosp", "apr")}
    traces = [json.loads(x) for x in (data / "traces" / "apr" / "train.jsonl").read_text().splitlines()]
    both = {r["problem"] for r in rows["sosp"]} & {r["problem"] for r in rows["apr"]}
    # programs that spawn (what concurrency can speed up), in file order
    chosen = [i for i in sorted(both) if traces[i]["sub_calls"]][:num_problems]
    problems = [json.loads(x) for x in (data / "problems" / "train.jsonl").read_text().splitlines()]
    replay = work / "replay.jsonl"
    replay.write_text("".join(json.dumps({"text": r["text"]}) + "\n" for m in ("sosp", "apr") for r in rows[m] if r["problem"] in chosen))
    return cfg, [Problem.from_json(problems[i]) for i in chosen], replay


async def run_method(url, tokenizer, cfg, problems, method, sequential_children=False):
    rollout = RolloutConfig(max_context=1024, temperature=0.0, sequential_children=sequential_children)
    async with RolloutClient(url) as client:
        runner = ProgramRunner(client, tokenizer, get_task(cfg), rollout)
        trajectories = []
        for problem in problems:  # one program at a time: latency per problem
            trajectories.append(await runner.run(problem, method))
    return trajectories


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--problems", type=int, default=12)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the server")
    args = parser.parse_args()
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        cfg, problems, replay = prepare(work, args.problems)
        save_random_model(work / "model", size="5m", max_position_embeddings=1024)
        tokenizer = AutoTokenizer.from_pretrained(str(work / "model"))
        overrides = [f"engine.replay_file={replay}", "engine.replay_compute=true", f"engine.num_threads={args.threads}"]
        results = {}
        with ServerProcess.start_ours(str(work / "model"), overrides=overrides, log_path=str(work / "server.log")).wait_healthy() as server:
            for name, method, sequential in (("sosp", "sosp", False), ("apr", "apr", False), ("apr_sequential_children", "apr", True)):
                started = time.time()
                trajectories = asyncio.run(run_method(server.url, tokenizer, cfg, problems, method, sequential))
                results[name] = {**summarize(trajectories, [512, 768, 1024], get_task(cfg)), "wall_s": time.time() - started}
                print(f"{name}: {results[name]['mean_latency_s']:.2f} s/problem, accuracy {results[name]['accuracy']:.1%}", flush=True)
    out = {
        "problems": len(problems),
        "apr_latency_s": results["apr"]["mean_latency_s"],
        "sosp_latency_s": results["sosp"]["mean_latency_s"],
        "apr_accuracy": results["apr"]["accuracy"],
        "sosp_accuracy": results["sosp"]["accuracy"],
        "children_sequential_latency_s": results["apr_sequential_children"]["mean_latency_s"],
        "concurrency_speedup": results["apr_sequential_children"]["mean_latency_s"] / max(results["apr"]["mean_latency_s"], 1e-9),
        "apr_over_sosp_latency": results["apr"]["mean_latency_s"] / max(results["sosp"]["mean_latency_s"], 1e-9),
        "details": results,
    }
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"\n{'run':<26} {'latency s':>9} {'accuracy':>8} {'total tok':>9} {'seq tok':>8} {'longest':>7} {'child/spawn':>11}")
    for name, r in results.items():
        print(f"{name:<26} {r['mean_latency_s']:>9.2f} {r['accuracy']:>8.1%} {r['mean_total_tokens']:>9.0f} "
              f"{r['mean_sequential_tokens']:>8.0f} {r['mean_longest_thread']:>7.0f} {r['children_per_spawn']:>11.2f}")
    print(f"concurrency speedup (sequential children / concurrent): {out['concurrency_speedup']:.2f}x")
    print(f"APR latency / SoS+ latency: {out['apr_over_sosp_latency']:.2f}")


if __name__ == "__main__":
    main()
