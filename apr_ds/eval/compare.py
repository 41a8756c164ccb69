"""`apr-ds compare A B`: two `apr-ds eval` runs on the same problems, paired problem by problem.

    apr-ds compare runs/x/eval/apr_sft.json runs/y/eval/apr_rl.json --windows 512 768

Two accuracies on the same 500 problems differ by a few points from noise alone; what says whether one model
is better is the problems only one of them solves. For each context window (a problem counts only if solved
with every thread within it, as `cumulative_accuracy`), and for each sampling setting both runs share, this
prints both accuracies, the counts solved by both / only A / only B, and the exact two-sided sign test
(McNemar's) on the discordant problems. With best-of-n runs, the first sample of each problem is compared.
"""

from __future__ import annotations

import json
from math import comb
from pathlib import Path

from apr_ds.errors import UserError
from apr_ds.rollout.trajectory import Trajectory


def add_arguments(parser) -> None:
    parser.add_argument("a", help="results of `apr-ds eval` (its .json, or the .trajectories.jsonl next to it)")
    parser.add_argument("b", help="the run to compare with A, on the same problems")
    parser.add_argument("--windows", type=int, nargs="*", default=None,
                        help="context windows to count at (default: no window, only correctness)")


def main(args) -> int:
    a, b = load_runs(args.a), load_runs(args.b)
    shared = [setting for setting in a if setting in b]
    if not shared:
        raise UserError(f"{args.a} and {args.b} share no sampling setting (temperature, budget): "
                        f"{sorted(a, key=str)} against {sorted(b, key=str)}")
    print(f"A = {args.a}\nB = {args.b}")
    print(f"{'T':>5} {'budget':>6} {'window':>7} {'n':>5} {'A':>7} {'B':>7} {'both':>5} {'only A':>6} {'only B':>6} {'p':>7}")
    for setting in shared:
        firsts_a, firsts_b = _same_problems(a[setting], b[setting], args.a, args.b)
        for window in args.windows or [None]:
            row = paired(_solved(firsts_a, window), _solved(firsts_b, window))
            print(f"{setting[0]:>5} {str(setting[1]):>6} {str(window or '-'):>7} {row['n']:>5} {row['a']:>7.1%} "
                  f"{row['b']:>7.1%} {row['both']:>5} {row['only_a']:>6} {row['only_b']:>6} {row['p']:>7.3f}")
    return 0


def sign_test_p(only_a: int, only_b: int) -> float:
    """Exact two-sided sign test: how likely a split at least this uneven is if A and B were equally good."""
    n, k = only_a + only_b, min(only_a, only_b)
    if n == 0:
        return 1.0
    return min(1.0, 2 * sum(comb(n, i) for i in range(k + 1)) / 2 ** n)


def paired(solved_a: list[bool], solved_b: list[bool]) -> dict:
    both = sum(x and y for x, y in zip(solved_a, solved_b))
    only_a = sum(x and not y for x, y in zip(solved_a, solved_b))
    only_b = sum(y and not x for x, y in zip(solved_a, solved_b))
    n = len(solved_a)
    return {"n": n, "a": sum(solved_a) / n, "b": sum(solved_b) / n, "both": both, "only_a": only_a,
            "only_b": only_b, "p": sign_test_p(only_a, only_b)}


def load_runs(given: str) -> dict[tuple, list[Trajectory]]:
    """Trajectories of one eval run, by (temperature, budget), in the order the problems were run."""
    path = Path(given)
    if path.suffix == ".json":
        path = path.with_name(path.stem + ".trajectories.jsonl")
    if not path.is_file():
        raise UserError(f"{given}: no trajectories at {path} (`apr-ds eval` writes them next to its results .json)")
    runs: dict[tuple, list[Trajectory]] = {}
    with open(path) as f:
        for number, line in enumerate(f, 1):
            try:
                record = json.loads(line)
                setting = (record.pop("temperature"), record.pop("budget"))
                trajectory = Trajectory.from_json(record)
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
                raise UserError(f"{path}:{number}: not an `apr-ds eval` trajectory ({type(e).__name__}: {e})") from None
            runs.setdefault(setting, []).append(trajectory)
    if not runs:
        raise UserError(f"{path}: empty, no trajectories to compare")
    return runs


def _firsts(trajectories: list[Trajectory]) -> list[Trajectory]:
    """Best-of-n runs write the n samples of a problem one after another; keep the first of each."""
    firsts: list[Trajectory] = []
    for trajectory in trajectories:
        if not firsts or trajectory.problem != firsts[-1].problem:
            firsts.append(trajectory)
    return firsts


def _same_problems(a: list[Trajectory], b: list[Trajectory], name_a: str, name_b: str) -> tuple[list, list]:
    firsts_a, firsts_b = _firsts(a), _firsts(b)
    if len(firsts_a) != len(firsts_b):
        raise UserError(f"{name_a} has {len(firsts_a)} problems and {name_b} {len(firsts_b)}: "
                        "a paired comparison needs the same problems (same split and eval.num_problems)")
    for index, (x, y) in enumerate(zip(firsts_a, firsts_b)):
        if x.problem != y.problem:
            raise UserError(f"problem {index} differs: {x.problem} in {name_a}, {y.problem} in {name_b} "
                            "(same split, data seed and eval.num_problems needed)")
    return firsts_a, firsts_b


def _solved(trajectories: list[Trajectory], window: int | None) -> list[bool]:
    return [t.correct and (window is None or t.longest_thread() <= window) for t in trajectories]
