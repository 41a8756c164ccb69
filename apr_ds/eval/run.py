"""`apr-ds eval`: accuracy, tokens and latency of APR, SoS+ or best-of-n on a held-out split.

    apr-ds eval --preset tiny --model runs/tiny/sft/apr/hf --method apr
    apr-ds eval --preset tiny --model runs/tiny/sft/sosp/hf --method sosp rollout.max_context=384
    apr-ds eval --preset tiny --model runs/tiny/sft/sosp/hf --method bon eval.n=8 eval.temperatures=[1.0]
    apr-ds eval --preset tiny --model DIR --method apr eval.temperatures=[0,0.1,0.5,1.0] eval.budgets=[2,4,6]
    apr-ds eval --model DIR --method apr --url http://gpu-node:30000    # an SGLang server (docs in README)

Without --url, eval starts `apr-ds serve --model DIR` as a child process (eval.servers of them, each problem on
one, so a CPU machine's cores share the work) and stops it at the end. With --url given several times, the
problems are split over those servers in the same way. The
tokenizer is read from the model directory. Results: {out}/{method}{tag}.json (one summary per setting,
formulas in apr_ds/rollout/trajectory.py) and {out}/{method}{tag}.trajectories.jsonl (every program).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path

from apr_ds.errors import UserError
from apr_ds.rollout.trajectory import TRAJECTORIES_SUFFIX


def add_arguments(parser) -> None:
    from apr_ds.config import add_config_arguments
    add_config_arguments(parser)
    parser.add_argument("--model", required=True, help="a Hugging Face checkpoint directory (with its tokenizer)")
    parser.add_argument("--method", required=True, choices=["apr", "sosp", "bon"], help="apr, sosp, or bon (best-of-n SoS+)")
    parser.add_argument("--url", action="append", default=None,
                        help="use this running SGLang-protocol server instead of starting one; repeat for several")
    parser.add_argument("--api-key", default=None, help="bearer key of the servers at --url")
    parser.add_argument("--tag", default="", help="suffix for the result file names")


def main(args) -> int:
    from apr_ds.config import config_from_args
    from apr_ds.config import save_config
    from apr_ds.rollout.server_proc import ServerProcess
    from apr_ds.tasks import get_task

    cfg = config_from_args(args)
    validate(cfg, args.method)
    if args.url and cfg.eval.servers != 1:
        raise UserError(f"eval.servers={cfg.eval.servers} starts servers of our own; with --url, pass --url once per server instead")
    problems = get_task(cfg).load_problems(cfg.run_dir, cfg.eval.split, cfg.eval.num_problems, cfg.eval.problems_file)
    out_dir = Path(cfg.eval.out_dir or Path(cfg.run_dir) / "eval")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir, f"{args.method}{args.tag}.config.yaml")
    servers = []
    urls = args.url or []
    try:
        for index in range(0 if urls else cfg.eval.servers):
            suffix = f".{index}" if cfg.eval.servers > 1 else ""
            servers.append(ServerProcess.start_ours(
                args.model, log_path=str(out_dir / f"{args.method}{args.tag}.server{suffix}.log"),
                threads=cfg.eval.server_threads or None, overrides=[f"engine.max_model_len={cfg.rollout.max_context}"]))
        urls = urls or [server.wait_healthy().url for server in servers]
        results = asyncio.run(evaluate(cfg, args.method, args.model, urls, problems, out_dir, args.tag, args.api_key))
    finally:
        for server in servers:
            server.stop()
    print_table(results)
    print(f"results: {out_dir / (args.method + args.tag)}.json")
    return 0


def validate(cfg, method: str) -> None:
    """Settings that cannot work together, refused before any server starts (each section's own ranges were
    checked when the config loaded)."""
    if method == "bon" and cfg.eval.n > 1 and 0.0 in cfg.eval.temperatures:
        raise UserError("best-of-n with eval.n > 1 needs sampling: set eval.temperatures to values > 0, e.g. [1.0]")
    if any(not 1 <= w <= cfg.rollout.max_context for w in cfg.eval.context_windows):
        # a window past the run's own is not measured: it would repeat the accuracy at rollout.max_context
        raise UserError(f"eval.context_windows must lie in [1, rollout.max_context={cfg.rollout.max_context}], "
                        f"got {cfg.eval.context_windows}")


def default_windows(max_context: int) -> list[int]:
    windows, w = [], 64
    while w < max_context:
        windows.append(w)
        w *= 2
    return windows + [max_context]


BEST_OF_N_KS = (1, 2, 4, 8, 16, 32, 64)
"""The k of pass@k and cons@k that best-of-n reports (those up to eval.n, and eval.n itself)."""


async def evaluate(cfg, method: str, model: str, urls: list[str], problems: list, out_dir: Path, tag: str = "",
                   api_key: str | None = None) -> dict:
    """Every sample of problem i runs on server i mod len(urls): a problem's programs share its prompt's prefix
    cache, and the servers split the problems (data-parallel evaluation)."""
    from transformers import AutoTokenizer

    from apr_ds.rollout.client import RolloutClient
    from apr_ds.rollout.runtime import ProgramRunner
    from apr_ds.tasks import get_task

    validate(cfg, method)
    tokenizer, task = AutoTokenizer.from_pretrained(model), get_task(cfg)
    windows = cfg.eval.context_windows or default_windows(cfg.rollout.max_context)
    samples = cfg.eval.n if method == "bon" else 1
    settings = [(t, b) for t in cfg.eval.temperatures for b in (cfg.eval.budgets or [None])]
    results = {"method": method, "model": str(model), "urls": list(urls), "split": cfg.eval.split, "settings": []}
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(RolloutClient(url, api_key=api_key, timeout_s=cfg.rollout.timeout_s + 30))
                   for url in urls]
        for client in clients:
            await client.wait_until_healthy(timeout_s=60)
        runners = [ProgramRunner(client, tokenizer, task, cfg.rollout) for client in clients]
        gate = asyncio.Semaphore(cfg.rollout.concurrency)
        with open(out_dir / f"{method}{tag}{TRAJECTORIES_SUFFIX}", "w") as trajectories_file:
            for temperature, budget in settings:
                started = time.time()
                runs = await run_setting(runners, gate, method, problems, samples, temperature, budget, urls)
                summary = {"temperature": temperature, "budget": budget, "n": samples, "wall_s": time.time() - started}
                results["settings"].append({**summary, **summarize_setting(runs, method, samples, windows, task)})
                for trajectory in runs:
                    record = trajectory.to_json()
                    record.update(temperature=temperature, budget=budget)
                    trajectories_file.write(json.dumps(record) + "\n")
    (out_dir / f"{method}{tag}.json").write_text(json.dumps(results, indent=2) + "\n")
    return results


async def run_setting(runners: list, gate: asyncio.Semaphore, method: str, problems: list, samples: int,
                      temperature: float, budget: int | None, urls: list[str]) -> list:
    """Every problem's `samples` programs at one temperature and budget; problem i runs on runner i mod len(runners).
    Returns the trajectories, a problem's samples one after another."""
    from tqdm import tqdm

    from apr_ds.rollout.client import ServerError

    bar = tqdm(total=len(problems) * samples, desc=f"{method} T={temperature} budget={budget}", unit="prog")
    solved = 0  # programs correct so far, for the running accuracy on the bar

    async def one(index, problem):
        nonlocal solved
        async with gate:
            trajectory = await runners[index % len(runners)].run(problem, "sosp" if method == "bon" else method,
                                                                 sub_call_budget=budget if method == "apr" else None,
                                                                 token_budget=budget if method != "apr" else None,
                                                                 temperature=temperature)
        solved += trajectory.correct
        bar.update(1)
        bar.set_postfix(acc=f"{solved / bar.n:.1%}")
        return trajectory
    try:
        return await asyncio.gather(*[one(i, p) for i, p in enumerate(problems) for _ in range(samples)])
    except ServerError as e:
        raise UserError(f"a server ({', '.join(urls)}) stopped answering: {e}") from None
    finally:
        bar.close()


def summarize_setting(runs: list, method: str, samples: int, windows: list[int], task) -> dict:
    """The metrics of one setting: over each problem's first sample, and for best-of-n pass@k and cons@k."""
    from apr_ds.eval.metrics import by_problem, cons_at_n, pass_at_n, summarize

    groups = by_problem(runs, samples)
    summary = summarize([group[0] for group in groups], windows, task)
    if method == "bon":
        ks = [k for k in BEST_OF_N_KS if k <= samples] + ([samples] if samples not in BEST_OF_N_KS else [])
        summary["pass_at"] = {str(k): sum(pass_at_n(g[:k]) for g in groups) / len(groups) for k in ks}
        summary["cons_at"] = {str(k): sum(cons_at_n(g[:k], task) for g in groups) / len(groups) for k in ks}
        summary["mean_total_tokens_at"] = {str(k): summary["mean_total_tokens"] * k for k in ks}
    return summary


def print_table(results: dict) -> None:
    print(f"\n{results['method']} on {results['split']} ({results['model']})")
    print(f"{'T':>5} {'budget':>6} {'acc':>6} {'total tok':>9} {'seq tok':>8} {'accel':>5} {'longest':>7} {'latency s':>9} "
          f"{'spawns':>6} {'spawned':>7} {'child/sp':>8}")
    for s in results["settings"]:
        print(f"{s['temperature']:>5} {str(s['budget']):>6} {s['accuracy']:>6.1%} {s['mean_total_tokens']:>9.0f} "
              f"{s['mean_sequential_tokens']:>8.0f} {s['mean_acceleration']:>5.2f} {s['mean_longest_thread']:>7.0f} "
              f"{s['mean_latency_s']:>9.2f} {s['spawns_per_program']:>6.2f} {s['spawn_rate']:>7.1%} {s['children_per_spawn']:>8.2f}")
        if s.get("lines"):
            print("      lines right: " + "  ".join(f"{k} {v['right']:.2f} (of {v['lines']})" for k, v in s["lines"].items()))
        if "pass_at" in s:
            print("      pass@k " + "  ".join(f"{k}:{v:.1%}" for k, v in s["pass_at"].items()) +
                  "   cons@k " + "  ".join(f"{k}:{v:.1%}" for k, v in s["cons_at"].items()))
