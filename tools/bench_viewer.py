"""The trace viewer at scale: page size and render times of `apr-ds view` for 2,000 programs, in headless Chromium,
beside the same measures for the small file they are made from.

    python tools/bench_viewer.py --trajectories runs/cpu/eval/apr.trajectories.jsonl --json tools/results/bench_viewer.json
    python tools/bench_viewer.py --json out.json            # first runs a 30-problem eval of the shipped APR model

What runs: the programs of a real `apr-ds eval` (the file given, or one made here), repeated until there are
--programs of them, so every program has a real program's size. For the small file and the big one: the time to
write the page, its size, and in Chromium (tests/browser.py, loaded from disk) the time from navigation start until
the index is rendered and laid out (`window.viewer.readyAt`), the time to open the largest program (tree, timeline
and text, laid out) and to sort the index by sequential tokens. Each browser figure is over --repeats fresh page loads: min, median, max.
The ratio columns are big / small.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from apr_ds.view.build import write_page  # noqa: E402
from browser import Browser  # noqa: E402


def eval_programs(folder: Path, problems: int) -> Path:
    """A real eval of the shipped APR model on the cpu task's test problems."""
    def apr_ds(*args):
        proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", *args], capture_output=True, text=True,
                              env={**os.environ, "OMP_NUM_THREADS": "1"})
        if proc.returncode:
            sys.exit(f"bench_viewer: apr-ds {' '.join(args)} failed:\n{proc.stderr[-3000:]}")
    apr_ds("data", "--preset", "cpu", f"run_dir={folder}", "task.num_train=20", "data.workers=1")
    apr_ds("eval", "--preset", "cpu", f"run_dir={folder}", "--model", str(REPO / "checkpoints/cpu/apr"), "--method",
           "apr", f"eval.num_problems={problems}", "rollout.max_context=768", "eval.context_windows=[512]")
    return folder / "eval" / "apr.trajectories.jsonl"


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def measure(trajectories: Path, out: Path, browser: Browser, repeats: int) -> dict:
    started = time.perf_counter()
    write_page([str(trajectories)], out)
    build_s = time.perf_counter() - started
    lines = trajectories.read_text().splitlines()
    largest = max(range(len(lines)), key=lambda i: len(lines[i]))
    ready, open_ms, sort_ms = [], [], []
    for _ in range(repeats):
        browser.open(out.as_uri())
        if browser.errors():
            sys.exit(f"bench_viewer: the page logged errors: {browser.errors()}")
        ready.append(browser.evaluate("window.viewer.readyAt"))
        open_ms.append(browser.evaluate(f"(() => {{ const t = performance.now(); window.viewer.open({largest});"
                                        f" void document.body.offsetHeight; return performance.now() - t; }})()"))
        browser.evaluate("location.hash = ''")
        sort_ms.append(browser.evaluate("(() => { const t = performance.now(); document.querySelector("
                                        "'#index th[data-key=sequential]').click(); void document.body.offsetHeight; return performance.now() - t; })()"))
    rows = browser.evaluate("document.querySelectorAll('#index tbody tr').length")
    assert rows == len(lines), f"the index shows {rows} rows for {len(lines)} programs"
    return {"programs": len(lines), "file_mb": trajectories.stat().st_size / 1e6, "page_mb": out.stat().st_size / 1e6,
            "build_s": build_s, "index_ready_ms": spread(ready), "open_largest_ms": spread(open_ms),
            "sort_ms": spread(sort_ms)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trajectories", help="an eval's trajectories file (default: run a 30-problem eval here)")
    parser.add_argument("--programs", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--json", required=True)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        small = Path(args.trajectories) if args.trajectories else eval_programs(folder / "run", 30)
        lines = small.read_text().splitlines()
        big = folder / "big.trajectories.jsonl"
        big.write_text("".join(lines[i % len(lines)] + "\n" for i in range(args.programs)))
        browser = Browser(folder / "chromium")
        try:
            results = {"load_avg_1m": os.getloadavg()[0],
                       "small": measure(small, folder / "small.html", browser, args.repeats),
                       "big": measure(big, folder / "big.html", browser, args.repeats)}
        finally:
            browser.close()
    results["load_avg_1m_after"] = os.getloadavg()[0]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    small, big = results["small"], results["big"]
    print(f"load average (1 min): {results['load_avg_1m']:.2f} before, {results['load_avg_1m_after']:.2f} after")
    print(f"{'':>22} {'small':>10} {'big':>10} {'big/small':>10}")
    print(f"{'programs':>22} {small['programs']:>10} {big['programs']:>10} {big['programs'] / small['programs']:>10.1f}")
    print(f"{'page MB':>22} {small['page_mb']:>10.2f} {big['page_mb']:>10.2f} {big['page_mb'] / small['page_mb']:>10.1f}")
    print(f"{'write page s':>22} {small['build_s']:>10.2f} {big['build_s']:>10.2f} {big['build_s'] / small['build_s']:>10.1f}")
    for key, label in (("index_ready_ms", "index ready ms (med)"), ("open_largest_ms", "open largest ms (med)"),
                       ("sort_ms", "sort index ms (med)")):
        a, b = small[key]["median"], big[key]["median"]
        print(f"{label:>22} {a:>10.0f} {b:>10.0f} {b / a:>10.1f}   big min-max {big[key]['min']:.0f}-{big[key]['max']:.0f}")
    print(f"results: {args.json}")


if __name__ == "__main__":
    main()
