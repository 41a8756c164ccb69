"""Arithmetic per operator in evaluations' trajectories, how each did on the problems that need a division, and lines that do not parse.

    python tools/operator_lines.py runs/x/eval/apr_sft.trajectories.jsonl runs/x/eval/apr_rl.trajectories.jsonl

For each file: per operator (+ * - /) the explored lines, the fraction right and how many have no right result
(a smaller number first, an inexact division); then how many of its problems cannot be solved without a division,
and how many of those it solved. A model trained with `rl.line_penalty` can stop dividing instead of dividing
right; this shows whether that costs it problems. Last, per 1,000 problems, the complete `Current State` /
`Exploring Operation` / `Generated Node` lines that do not parse: a penalised model can move its mistakes into
lines no check reads.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from apr_ds.tasks.countdown_lines import malformed_counts, operator_counts  # noqa: E402
from apr_ds.tasks.countdown import Problem, solve  # noqa: E402


def summarise(path: Path) -> dict:
    texts, needs_division, solved_needing_division, solved, problems = [], 0, 0, 0, 0
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                nums, target = row["problem"]["nums"], row["problem"]["target"]
                texts.extend(thread["text"] for thread in row["threads"])
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise ValueError(f"{path}:{number}: not an eval trajectory ({type(e).__name__}: {e})") from None
            needs = solve(Problem(tuple(nums), target), operators="+-*") is None
            correct = bool(row.get("correct"))
            problems += 1
            solved += correct
            needs_division += needs
            solved_needing_division += needs and correct
    return {"file": str(path), "problems": problems, "solved": solved, "need_division": needs_division,
            "solved_needing_division": solved_needing_division, "operators": operator_counts(texts),
            "malformed": malformed_counts(texts)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("trajectories", nargs="+", type=Path, help="*.trajectories.jsonl written by apr-ds eval")
    parser.add_argument("--out", type=Path, help="also write the numbers as JSON here")
    args = parser.parse_args(argv)
    try:
        summaries = [summarise(path) for path in args.trajectories]
    except (OSError, ValueError) as e:
        print(f"operator_lines: error: {e}", file=sys.stderr)
        return 2
    print(f"{'file':<40} {'+':>17} {'*':>17} {'-':>23} {'/':>23}  need / solved of them  "
          "malformed per 1,000 problems: state / operation / node")
    for s in summaries:
        cells = []
        for sign, c in s["operators"].items():
            right = f"{c['right'] / c['lines']:.3f}" if c["lines"] else "  -  "
            cells.append(f"{c['lines']:>7,} {right}" + (f" inv {c['no_right_result']:>4}" if sign in "-/" else ""))
        print(f"{Path(s['file']).name[:40]:<40} {cells[0]:>17} {cells[1]:>17} {cells[2]:>23} {cells[3]:>23}  "
              f"{s['need_division']:>4} / {s['solved_needing_division']:<14} "
              + " / ".join(f"{1000 * n / max(s['problems'], 1):.0f}" for n in s["malformed"].values()))
    if args.out:
        args.out.write_text(json.dumps(summaries, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
