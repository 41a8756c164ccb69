"""Benchmark `apr-ds serve` against transformers `generate`, side by side in one run.

    python tools/bench_engine.py --json runs/bench_engine.json        # ~1 minute on 2 CPU cores
    python tools/bench_engine.py --json out.json --threads 2         # only on a machine nobody else uses

One torch thread by default: on a shared 2-core machine, two threads per process stall in OpenMP
barriers whenever another process runs (tiny ops then take milliseconds), and the numbers become noise.
HF `generate` runs are interleaved with our measurements so both see the same load from other users;
the 1-minute load average is recorded in the JSON.

1. HF `generate`, one request at a time (greedy, KV cache), in this process.
2. Our server as a child process, over real HTTP: decode throughput (generated tokens per second of
   wall time, prefill included) with 1, 16 and 64 concurrent requests.
3. Prefix-cache reuse for the APR parent-resume pattern: a long prompt, generate, then resume with
   prompt + output + a join block; `cached_tokens / prompt_tokens` of the resumed request.
4. Where decode time goes: the engine in-process, a decode step split into scheduler, batch
   preparation, attention / MLP / other layers, sampling; plus the top torch ops by self CPU time.

Same random ~5M-parameter model (apr_ds.engine.toy's `5m` size, our domain tokenizer's vocabulary) throughout: a Llama,
or with --family the same shape as Qwen2 or Qwen3.
Writes at least tokens_per_s, hf_generate_tokens_per_s, speedup_at_64, prefix_cache_hit_ratio to --json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from apr_ds.rollout.client import RolloutClient  # noqa: E402
from engine_fixtures import save_model, serve  # noqa: E402

CONCURRENCY = [1, 16, 64]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", required=True, help="where to write the results")
    parser.add_argument("--size", default="5m", help="apr_ds.engine.toy size (tiny, 5m)")
    parser.add_argument("--family", default="llama", choices=["llama", "qwen2", "qwen3"],
                        help="the model family (the same shape: Qwen2 adds q/k/v biases, Qwen3 per-head q/k norms)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads for both HF and the server")
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=128)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rng = random.Random(0)
    prompt = lambda n: [1] + [rng.randrange(4, 1117) for _ in range(n - 1)]  # noqa: E731
    results = {"model": args.size, "family": args.family, "threads": args.threads, "prompt_len": args.prompt_len, "new_tokens": args.new_tokens,
               "load_average_1min": {"start": os.getloadavg()[0]}}  # other users' load skews every number here
    with tempfile.TemporaryDirectory() as tmp:
        hf = save_model(tmp, family=args.family, size=args.size, max_position_embeddings=2048)
        torch.set_num_threads(args.threads)  # save_model pins 1 thread for tests
        hf_prompts = [prompt(args.prompt_len) for _ in range(2)]
        hf_once = lambda: hf_generate(hf, hf_prompts, args.new_tokens)  # noqa: E731
        hf_generate(hf, [prompt(8)], 8)  # warm-up
        with serve(tmp, f"engine.num_threads={args.threads}") as url:  # the later override wins
            results.update(asyncio.run(served(url, prompt, args, hf_once)))
        del hf
        results["load_average_1min"]["after_server"] = os.getloadavg()[0]
        results["decode_breakdown"] = decode_breakdown(tmp, prompt, args)
        results["load_average_1min"]["end"] = os.getloadavg()[0]
    results["speedup_at_64"] = results["tokens_per_s"]["64"] / results["hf_generate_tokens_per_s"]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2))
    print_table(results)
    return 0


def hf_generate(model, prompts: list[list[int]], new_tokens: int) -> float:
    """Tokens/s of transformers `generate`, one request at a time (greedy, KV cache)."""
    run = lambda p: model.generate(torch.tensor([p]), max_new_tokens=new_tokens, min_new_tokens=new_tokens,  # noqa: E731
                                   do_sample=False, pad_token_id=0)
    start = time.perf_counter()
    for p in prompts:
        run(p)
    return len(prompts) * new_tokens / (time.perf_counter() - start)


async def served(url: str, prompt, args, hf_once) -> dict:
    """Our server's throughput, with an HF `generate` run before each measurement and after the last:
    the server idles meanwhile, and both see the same load from other users of the machine."""
    params = {"max_new_tokens": args.new_tokens, "temperature": 0, "ignore_eos": True}
    out = {"tokens_per_s": {}, "mean_e2e_latency_s": {}}
    hf_rates = []
    async with RolloutClient(url, timeout_s=600) as client:
        await client.wait_until_healthy()
        await client.generate_tokens(prompt(8), {"max_new_tokens": 8})  # warm-up
        for c in CONCURRENCY:
            hf_rates.append(hf_once())
            waves = 3 if c == 1 else 1
            start, gens = time.perf_counter(), []
            for _ in range(waves):
                gens += await asyncio.gather(*(client.generate_tokens(prompt(args.prompt_len), params) for _ in range(c)))
            elapsed = time.perf_counter() - start
            out["tokens_per_s"][str(c)] = sum(len(g.output_ids) for g in gens) / elapsed
            out["mean_e2e_latency_s"][str(c)] = sum(g.meta_info["e2e_latency"] for g in gens) / len(gens)
        hf_rates.append(hf_once())
        out["hf_generate_tokens_per_s"] = sum(hf_rates) / len(hf_rates)
        out["hf_generate_runs_tokens_per_s"] = hf_rates
        # the APR parent-resume pattern: long prompt, generate, resume with prompt + output + join block
        parent_prompt = prompt(1024)
        parent = await client.generate_tokens(parent_prompt, params)
        resumed = await client.generate_tokens(parent_prompt + parent.output_ids + prompt(32)[1:], params)
        out["prefix_cache_hit_ratio"] = resumed.cached_tokens / resumed.prompt_tokens
        out["resume_prompt_tokens"], out["resume_cached_tokens"] = resumed.prompt_tokens, resumed.cached_tokens
        # group sampling: 8 samples of one prompt after the first finished
        group_prompt = prompt(256)
        await client.generate_tokens(group_prompt, {**params, "max_new_tokens": 4})
        group = await asyncio.gather(*(client.generate_tokens(group_prompt, {**params, "temperature": 1.0})
                                       for _ in range(8)))
        out["group_sampling_hit_ratio"] = sum(g.cached_tokens for g in group) / sum(g.prompt_tokens for g in group)
    return out


def decode_breakdown(model_dir: str, prompt, args) -> dict:
    """Time decode steps in-process: wrap the pieces of a step and sum their wall time."""
    from apr_ds.config import EngineConfig
    from apr_ds.engine.engine import Engine
    from apr_ds.engine.sequence import SamplingParams

    engine = Engine(model_dir, EngineConfig(num_threads=args.threads))  # not started: we step it ourselves
    scheduler, runner, model = engine.scheduler, engine.runner, engine.model
    timers: dict[str, float] = {}

    def timed(name, fn):
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                timers[name] = timers.get(name, 0.0) + time.perf_counter() - start
        return wrapper
    runner.prepare, runner.sample = timed("prepare batch", runner.prepare), timed("sampling", runner.sample)
    runner.run = timed("runner", runner.run)
    for layer in model.model.layers:
        layer.self_attn.forward = timed("attention (qkv, rope, KV writes, sdpa, o_proj)", layer.self_attn.forward)
        layer.mlp.forward = timed("mlp", layer.mlp.forward)
    report = {}
    for batch in (1, 64):
        for i in range(batch):
            scheduler.add(engine.new_sequence(prompt(args.prompt_len), SamplingParams(
                max_new_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)))
        while scheduler.waiting:
            scheduler.step()  # prefill
        for _ in range(40):  # warm-up decode, past the slab's growth at 64 tokens: measure steady steps
            scheduler.step()
        timers.clear()
        steps = 20
        start = time.perf_counter()
        for _ in range(steps):
            scheduler.step()
        total = time.perf_counter() - start
        spent = dict(timers)  # a snapshot: the wrappers keep adding during profiling
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
            for _ in range(10):  # separately: the profiler's own overhead would skew the timings above
                scheduler.step()
        profiled = sum(e.self_cpu_time_total for e in prof.key_averages()) / 1e6
        layers = sum(v for k, v in spent.items() if k.startswith(("attention", "mlp")))
        split = {k: spent[k] for k in ("prepare batch", "sampling") if k in spent}
        split.update({k: v for k, v in spent.items() if k.startswith(("attention", "mlp"))})
        split["embed, norms, lm_head"] = spent["runner"] - sum(split.values())
        split["scheduler (python: stops, slots, bookkeeping)"] = total - spent["runner"]
        ops = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:8]
        report[str(batch)] = {
            "ms_per_step": 1000 * total / steps,
            "share": {k: v / total for k, v in split.items()},
            "top_ops_self_cpu_share": {e.key: e.self_cpu_time_total / 1e6 / profiled for e in ops},
            "layers_ms_per_step": 1000 * layers / steps,
        }
        scheduler.abort_all("benchmark done")
    return report


def print_table(r: dict) -> None:
    print(f"\nmodel {r['model']}, {r['threads']} threads, prompt {r['prompt_len']}, {r['new_tokens']} new tokens (greedy); "
          f"1-min load average {r['load_average_1min']} (above ~{r['threads']}: other processes competed)")
    print(f"{'':28}{'tokens/s':>10}{'vs HF':>8}")
    print(f"{'HF generate, 1 at a time':28}{r['hf_generate_tokens_per_s']:>10.0f}{1.0:>8.2f}")
    for c in CONCURRENCY:
        tps = r["tokens_per_s"][str(c)]
        print(f"{'apr-ds serve, ' + str(c) + ' concurrent':28}{tps:>10.0f}{tps / r['hf_generate_tokens_per_s']:>8.2f}")
    print(f"speedup at 64: {r['speedup_at_64']:.1f}x   parent-resume prefix hit ratio: {r['prefix_cache_hit_ratio']:.3f} "
          f"({r['resume_cached_tokens']}/{r['resume_prompt_tokens']})   group sampling hit ratio: "
          f"{r['group_sampling_hit_ratio']:.3f}")
    for batch, b in r["decode_breakdown"].items():
        print(f"\ndecode step at batch {batch}: {b['ms_per_step']:.1f} ms")
        for name, share in sorted(b["share"].items(), key=lambda kv: -kv[1]):
            print(f"  {share:6.1%}  {name}")
        print("  top ops (self CPU): " + ", ".join(f"{k} {v:.0%}" for k, v in b["top_ops_self_cpu_share"].items()))


if __name__ == "__main__":
    sys.exit(main())
