"""`apr-ds eval --url` against real SGLang and against `apr-ds serve`, both serving the shipped APR model: the same
programs, thread by thread (texts, output ids, finish reasons, statuses) and the same verdicts. Only the cache
accounting and the clocks may differ."""

import json
import subprocess
import sys

import pytest

from servers import SHIPPED_APR, started

PROBLEMS = 6


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("eval_sglang")
    subprocess.run([sys.executable, "-m", "apr_ds.cli", "data", "--preset", "cpu", f"run_dir={run}",
                    "task.num_train=20", "data.workers=1"], check=True, capture_output=True, timeout=600)
    return run


def _eval(run_dir, url: str, tag: str) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "eval", "--preset", "cpu", f"run_dir={run_dir}",
                           "--model", str(SHIPPED_APR), "--method", "apr", "--url", url, "--tag", tag,
                           f"eval.num_problems={PROBLEMS}", "rollout.max_context=768", "eval.context_windows=[512]"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    [path] = (run_dir / "eval").glob(f"apr{tag}*.trajectories.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


def _programs(records) -> list:
    def segment(s):
        return s["prompt_ids"], s["output_ids"], s["finish_reason"]
    return [(r["problem"], r.get("correct"), r.get("reason"),
             [(t["text"], t["status"], [segment(s) for s in t["segments"]]) for t in r["threads"]]) for r in records]


def test_eval_against_sglang_gives_the_same_programs_as_against_our_server(run_dir, tmp_path):
    results = {}
    for kind in ("ours", "sglang"):
        with started(kind, SHIPPED_APR, 768, tmp_path / f"{kind}.log") as server:
            results[kind] = _eval(run_dir, server.url, f"_{kind}")
    ours, sglang = _programs(results["ours"]), _programs(results["sglang"])
    assert len(ours) == PROBLEMS and sum(len(p[3]) for p in ours) > PROBLEMS  # programs that spawned children
    for a, b in zip(ours, sglang):
        assert a == b, f"problem {a[0]} differs between the servers"
