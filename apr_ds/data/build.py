"""`apr-ds data`: problems -> solver traces -> SFT sequences -> token files, plus the tokenizer.

    apr-ds data --preset tiny                       # a few thousand problems, about a minute on 2 cores
    apr-ds data --preset cpu data.workers=2
    apr-ds data --preset paper run_dir=/scratch/apr # 500k problems; use many workers

Writes under `{run_dir}/data/`:
    config.yaml                       the resolved config
    problems/{train,val,test,test_unseen_targets}.jsonl    one problem a line (the task's JSON form)
    traces/{sosp,apr}/{train,val}.jsonl                     solver call trees (one per problem)
    sequences/{sosp,apr}/{train,val}.jsonl                  {"text", "problem", "role"}
    tokens/{sosp,apr}/{train,val}.npz                       ids (int32, bos+text+eos per sequence), offsets (int64)
    tokenizer/                        Hugging Face tokenizer directory
    manifest.json                     config, seed, counts, solver and token statistics, tokenizer sha256
The output is byte-identical for a given config, whatever `data.workers` is.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from apr_ds.config import METHODS
from apr_ds.tasks.task import problem_rng

SEQUENCE_SPLITS = ("train", "val")


def add_arguments(parser) -> None:
    from apr_ds.config import add_config_arguments
    add_config_arguments(parser)


def main(args) -> int:
    from apr_ds.config import config_from_args
    cfg = config_from_args(args)
    started = time.time()
    manifest = build(cfg)
    print_summary(manifest, time.time() - started)
    return 0


def _write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _jsonl(rows) -> bytes:
    return "".join(json.dumps(r, separators=(",", ":")) + "\n" for r in rows).encode()


def write_problems(path: Path, problems) -> None:
    """A problems JSONL (one problem's JSON form a line), what `eval.problems_file` and `Task.load_problems` read."""
    _write_atomic(path, _jsonl(p.to_json() for p in problems))


_TASK = None  # set in the parent before the pool forks, so workers inherit it


def _solve_job(job):
    method, split, index, problem, seed = job
    return _TASK.solve(problem, method, problem_rng(seed, method, f"{split}:{index}"))


def solve_all(method: str, split: str, problems, cfg, pool, progress) -> list:
    jobs = [(method, split, i, p, cfg.task.seed) for i, p in enumerate(problems)]
    runs = []
    results = pool.imap(_solve_job, jobs, chunksize=64) if pool else map(_solve_job, jobs)
    for run in results:
        runs.append(run)
        progress.update(1)
    return runs


def build(cfg) -> dict:
    from apr_ds.config import save_config
    from apr_ds.data.tokenizer import install_tokenizer
    from apr_ds.tasks import get_task

    global _TASK
    task = _TASK = get_task(cfg)
    out = Path(cfg.run_dir) / "data"
    save_config(cfg, out)
    tokenizer = install_tokenizer(out / "tokenizer", cfg.data.tokenizer, task.trace_phrases)
    splits = make_problems(task, cfg, out)
    stats = write_methods(splits, cfg, tokenizer, out)
    manifest = make_manifest(task, cfg, splits, tokenizer, stats, out)
    _write_atomic(out / "manifest.json", (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def make_problems(task, cfg, out: Path) -> dict[str, list]:
    """Draw the task's problem splits and write them to problems/{split}.jsonl."""
    from tqdm import tqdm

    from apr_ds.errors import UserError
    total = sum([cfg.task.num_train, cfg.task.num_val, cfg.task.num_test, cfg.task.num_test_unseen_targets])
    with tqdm(total=total, desc="problems", unit="pb", dynamic_ncols=True) as bar:
        try:
            splits = task.make_splits(workers=cfg.data.workers, progress=bar.update)
        except ValueError as e:
            raise UserError(str(e)) from None
    for name, problems in splits.items():
        write_problems(out / "problems" / f"{name}.jsonl", problems)
    return splits


def write_methods(splits: dict[str, list], cfg, tokenizer, out: Path) -> dict:
    """Solve every sequence split with every method and write its traces, sequences and tokens.
    Returns the statistics per method and split."""
    from tqdm import tqdm
    pool = None
    if cfg.data.workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("fork").Pool(cfg.data.workers)
    stats: dict = {}
    try:
        for method in METHODS:
            stats[method] = {}
            for split in SEQUENCE_SPLITS:
                problems = splits[split]
                with tqdm(total=len(problems), desc=f"solve {method}/{split}", unit="pb", dynamic_ncols=True) as bar:
                    runs = solve_all(method, split, problems, cfg, pool, bar)
                stats[method][split] = write_runs(method, split, runs, cfg, tokenizer, out)
    finally:
        if pool:
            pool.close()
            pool.join()
    return stats


def write_runs(method: str, split: str, runs, cfg, tokenizer, out: Path) -> dict:
    """Write one method's split: its solver runs, the SFT sequences kept from them and their token ids.
    Returns the split's statistics."""
    from apr_ds.data.sequences import run_to_json
    from apr_ds.data.tokenizer import encode
    _write_atomic(out / "traces" / method / f"{split}.jsonl", _jsonl(run_to_json(r) for r in runs))
    condition = {"sosp": "token_budget" if cfg.data.sosp_token_budget else "none",
                 "apr": "sub_calls" if cfg.data.apr_sub_call_budget else "none"}[method]
    seqs, token_lists, split_stats = _sequences(runs, condition, cfg, tokenizer, encode)
    _write_atomic(out / "sequences" / method / f"{split}.jsonl", _jsonl(s.to_json() for s in seqs))
    _write_tokens(out / "tokens" / method / f"{split}.npz", token_lists)
    return split_stats


def _write_tokens(path: Path, token_lists: list[list[int]]) -> None:
    """All sequences' ids end to end (int32) and where each starts (int64 offsets, one more than sequences)."""
    import numpy as np
    ids = np.concatenate([np.asarray(t, dtype=np.int32) for t in token_lists]) if token_lists else np.zeros(0, np.int32)
    offsets = np.zeros(len(token_lists) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(t) for t in token_lists])
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(str(path) + ".tmp.npz", ids=ids, offsets=offsets)
    os.replace(str(path) + ".tmp.npz", path)


def make_manifest(task, cfg, splits: dict[str, list], tokenizer, stats: dict, out: Path) -> dict:
    import dataclasses

    from apr_ds.data.tokenizer import tokenizer_sha256
    return {
        "format": 1,
        "task": task.name,
        "seed": cfg.task.seed,
        "config": json.loads(json.dumps(dataclasses.asdict(cfg))),
        "problems": {name: len(p) for name, p in splits.items()},
        "tokenizer_sha256": tokenizer_sha256(out / "tokenizer"),
        "vocab_size": len(tokenizer),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "methods": stats,
    }


def _percentiles(values) -> dict:
    import numpy as np
    if not values:
        return {"p50": 0, "p95": 0, "max": 0, "mean": 0.0}
    arr = np.asarray(values)
    return {"p50": int(np.percentile(arr, 50)), "p95": int(np.percentile(arr, 95)), "max": int(arr.max()),
            "mean": round(float(arr.mean()), 1)}


def _sequences(runs, condition, cfg, tokenizer, encode):
    """Tokenize and filter one split's runs. Returns (kept sequences, their token ids, statistics)."""
    from apr_ds.data.sequences import common_prefix_len, run_to_sequences
    bos, eos, limit = tokenizer.bos_token_id, tokenizer.eos_token_id, cfg.data.max_seq_len
    kept, token_lists = [], []
    seq_lens, longest_thread, total_tokens, children, spawns = [], [], [], [], []
    dropped_failed = dropped_long = solved = 0
    count = lambda text: len(encode(tokenizer, text))  # noqa: E731
    for index, run in enumerate(runs):
        solved += run.solved
        seqs = run_to_sequences(run, index, condition, count, cfg.data.token_budget_bin, limit)
        ids = [[bos] + encode(tokenizer, s.text) + [eos] for s in seqs]
        threads = run.threads()
        spawns.append(sum(len(t.sub_calls) for t in threads))
        children += [len(spawn) for t in threads for spawn in t.sub_calls]
        # Total tokens: every thread's tokens, counting the text consecutive main calls share only once.
        shared = 0
        start = 0
        for thread in threads:
            calls = ids[start:start + len(thread.main_calls)]
            shared += sum(common_prefix_len(a, b) for a, b in zip(calls, calls[1:]))
            start += len(thread.main_calls)
        total_tokens.append(sum(len(x) for x in ids) - shared)
        longest_thread.append(max(len(x) for x in ids))
        if not run.solved and not cfg.data.keep_failed:
            dropped_failed += 1
            continue
        if cfg.data.over_length == "drop" and max(len(x) for x in ids) > limit:
            dropped_long += 1
            continue
        kept += seqs
        token_lists += ids
        seq_lens += [len(x) for x in ids]
    n = max(len(runs), 1)
    stats = {
        "problems": len(runs),
        "solver_success": round(solved / n, 4),
        "solved_within_limit": None,
        "sequences": len(kept),
        "tokens": int(sum(seq_lens)),
        "dropped_failed": dropped_failed,
        "dropped_over_length": dropped_long,
        "spawns_per_problem": round(sum(spawns) / n, 3),
        "children_per_spawn": round(sum(children) / max(len(children), 1), 3),
        "tokens_per_sequence": _percentiles(seq_lens),
        "longest_thread_per_problem": _percentiles(longest_thread),
        "total_tokens_per_problem": _percentiles(total_tokens),
    }
    stats["solved_within_limit"] = round(sum(1 for r, l in zip(runs, longest_thread) if r.solved and l <= limit) / n, 4)
    return kept, token_lists, stats


def print_summary(manifest: dict, seconds: float) -> None:
    p = manifest["problems"]
    print(f"\nproblems: train {p['train']}, val {p['val']}, test {p['test']}, test_unseen_targets {p['test_unseen_targets']}")
    header = f"{'method':<6} {'solved':>7} {'in-limit':>8} {'seqs':>8} {'spawns/pb':>9} {'child/spawn':>11} {'tok/seq p50/p95/max':>22} {'longest p95':>11} {'total/pb p50':>12}"
    print(header)
    for method, splits in manifest["methods"].items():
        s = splits["train"]
        t = s["tokens_per_sequence"]
        print(f"{method:<6} {s['solver_success']:>7.1%} {s['solved_within_limit']:>8.1%} {s['sequences']:>8} {s['spawns_per_problem']:>9.2f} "
              f"{s['children_per_spawn']:>11.2f} {str(t['p50']) + '/' + str(t['p95']) + '/' + str(t['max']):>22} "
              f"{s['longest_thread_per_problem']['p95']:>11} {s['total_tokens_per_problem']['p50']:>12}")
    print(f"(train split; 'in-limit' = solved with every thread within data.max_seq_len={manifest['config']['data']['max_seq_len']} tokens)")
    print(f"done in {seconds:.1f}s")
