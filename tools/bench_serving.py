"""SGLang's bench_serving, unmodified, against `apr-ds serve` and against real SGLang on CPU: same model, same load.

    python tools/bench_serving.py                      # ~2 minutes on 2 CPU cores; needs `make sglang`
    python tools/bench_serving.py --num-prompts 50 --threads 2

Both servers serve the shipped APR checkpoint (checkpoints/cpu/apr) for threads of 768 tokens in float32 with
--threads intra-op threads, one at a time (never both at once, so neither steals the other's cores). For each,
bench_serving (from the SGLang venv, APR_SGLANG_PYTHON or .venv-sglang) runs its random-ids dataset, streamed,
through the `sglang` (/generate) and `sglang-oai` (/v1/completions) backends. Each run's JSON result line lands in
tools/results/bench_serving_<server>_<backend>.json; tools/results/bench_serving.json holds the table:
requests/s, output tokens/s and mean TTFT per server and backend, with the ratio ours / SGLang.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from apr_ds.rollout.server_proc import ServerProcess  # noqa: E402

MODEL = REPO / "checkpoints" / "cpu" / "apr"
RESULTS = REPO / "tools" / "results"
MAX_CONTEXT = 768
BACKENDS = ("sglang", "sglang-oai")
METRICS = (("request_throughput", "requests/s"), ("output_throughput", "output tok/s"), ("mean_ttft_ms", "TTFT ms"))


def sglang_python() -> str:
    python = Path(os.environ.get("APR_SGLANG_PYTHON") or REPO / ".venv-sglang" / "bin" / "python")
    if not python.is_file():
        sys.exit(f"no SGLang venv at {python}: `make sglang` builds it")
    return str(python)


def start(kind: str, threads: int, log: Path) -> ServerProcess:
    if kind == "sglang":
        return ServerProcess.start_sglang(str(MODEL), MAX_CONTEXT, python=sglang_python(), device="cpu",
                                          threads=threads, log_path=str(log))
    return ServerProcess.start_ours(str(MODEL), log_path=str(log), threads=threads,
                                    overrides=[f"engine.max_model_len={MAX_CONTEXT}", f"engine.num_threads={threads}"])


def bench(url: str, backend: str, args, out: Path) -> dict:
    out.unlink(missing_ok=True)
    cmd = [sglang_python(), "-m", "sglang.bench_serving", "--backend", backend, "--base-url", url,
           "--dataset-name", "random-ids", "--tokenizer", str(MODEL), "--num-prompts", str(args.num_prompts),
           "--random-input-len", str(args.input_len), "--random-output-len", str(args.output_len),
           "--seed", str(args.seed), "--output-file", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}  # random-ids downloads nothing
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1800)
    if done.returncode != 0 or not out.is_file():
        sys.exit(f"bench_serving --backend {backend} against {url} failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    result = json.loads(out.read_text().strip().splitlines()[-1])
    if result["completed"] != args.num_prompts:
        sys.exit(f"bench_serving --backend {backend}: only {result['completed']}/{args.num_prompts} requests succeeded")
    result.pop("server_info", None)  # SGLang's is its whole ServerArgs; not needed to compare
    out.write_text(json.dumps(result, indent=1) + "\n")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-prompts", type=int, default=20)
    parser.add_argument("--input-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=16)
    parser.add_argument("--threads", type=int, default=1, help="intra-op threads of each server")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, dict[str, dict]] = {}
    with tempfile.TemporaryDirectory() as logs:
        for kind in ("ours", "sglang"):
            server = start(kind, args.threads, Path(logs) / f"{kind}.log")
            try:
                server.wait_healthy(600)
                results[kind] = {b: bench(server.url, b, args, RESULTS / f"bench_serving_{kind}_{b}.json")
                                 for b in BACKENDS}
            finally:
                server.stop()
    table = {b: {name: {"ours": results["ours"][b][key], "sglang": results["sglang"][b][key],
                        "ratio": results["ours"][b][key] / results["sglang"][b][key]}
                 for key, name in METRICS} for b in BACKENDS}
    summary = {"load": {"num_prompts": args.num_prompts, "random_input_len": args.input_len,
                        "random_output_len": args.output_len, "threads": args.threads, "dataset": "random-ids",
                        "stream": True, "model": str(MODEL.relative_to(REPO))}, "table": table}
    (RESULTS / "bench_serving.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{'backend':<12} {'metric':<14} {'apr-ds serve':>13} {'SGLang':>10} {'ours/SGLang':>12}")
    for b, rows in table.items():
        for name, row in rows.items():
            print(f"{b:<12} {name:<14} {row['ours']:>13.2f} {row['sglang']:>10.2f} {row['ratio']:>12.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
