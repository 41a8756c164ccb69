"""`apr-ds compare A B`: two `apr-ds eval` runs on the same problems, paired problem by problem.

    apr-ds compare runs/x/eval/apr_sft.json runs/y/eval/apr_rl.json --windows 512 768

Two accuracies on the same 500 problems differ by a few points from noise alone; what says whether one model
is better is the problems only one of them solves. For each context window (a problem counts only if solved
with every thread within it, as in `cumulative_accuracy`) and each sampling setting, this prints both
accuracies, the counts solved by both / only A / only B, and the exact two-sided sign test (McNemar's) on the
discordant problems. With best-of-n runs, the first sample of each problem is compared.

Settings (temperature, budget) are paired by equality; two runs of one setting each are paired whatever their
settings (greedy APR against best-of-n SoS+ at T 0.7, say).

More pairs on other problems (the same two models on the val and the test split, say) are pooled too:

    apr-ds compare sft_test.json rl_test.json sft_val.json rl_val.json --windows 768

prints each pair, then the counts summed over the pairs and the sign test on the sums.
"""

from __future__ import annotations

import json
from itertools import combinations
from math import comb
from pathlib import Path
from typing import NamedTuple

from apr_ds.errors import UserError
from apr_ds.eval.metrics import by_problem, solved_within
from apr_ds.eval.report import load_result_file
from apr_ds.rollout.trajectory import TRAJECTORIES_SUFFIX
from apr_ds.rollout.trajectory import Trajectory


def add_arguments(parser) -> None:
    parser.add_argument("runs", metavar="A B", nargs="+",
                        help="results of `apr-ds eval` (its .json, or the .trajectories.jsonl next to it), in pairs: "
                             "A and the run to compare with it on the same problems; more pairs (on other problems) "
                             "are also pooled")
    parser.add_argument("--windows", type=int, nargs="*", default=None,
                        help="context windows to count at (default: none, only correctness)")


def main(args) -> int:
    windows = list(dict.fromkeys(args.windows)) if args.windows else [None]  # a window given twice is counted once
    if any(w is not None and w < 1 for w in windows):
        raise UserError(f"--windows must be positive token counts, got {args.windows}")
    if len(args.runs) % 2:
        raise UserError(f"give the runs in pairs (A B, or A B A2 B2 ...); got {len(args.runs)}: {' '.join(args.runs)}")
    pairs = [(args.runs[i], args.runs[i + 1]) for i in range(0, len(args.runs), 2)]
    tables = [_pair_table(name_a, name_b, windows) for name_a, name_b in pairs]  # all checked before anything is printed
    pooled = _pooled(tables, pairs) if len(pairs) > 1 else None
    for (name_a, name_b), table in zip(pairs, tables):
        print(f"A = {name_a} ({table.method_a})\nB = {name_b} ({table.method_b})")
        _print_rows(table.rows)
    if pooled:
        print(f"pooled over the {len(pairs)} pairs above ({sum(len(t.problems) for t in tables)} problems; "
              "A is the first run of each pair)")
        _print_rows(pooled)
    return 0


class PairTable(NamedTuple):
    method_a: str
    method_b: str
    problems: set[str]
    """Every problem the pair was compared on, as canonical JSON."""
    rows: dict[tuple, dict]
    """(setting of A, setting of B, window) -> the counts of `paired`."""


def _pair_table(name_a: str, name_b: str, windows: list) -> PairTable:
    a, b = load_run(name_a), load_run(name_b)
    if a["split"] != b["split"]:
        raise UserError(f"{name_a} is on the {a['split']!r} split and {name_b} on {b['split']!r}: "
                        "a paired comparison needs the same problems")
    rows, problems = {}, set()
    for setting_a, setting_b in _paired_settings(a, b, name_a, name_b):
        firsts_a, firsts_b = a["firsts"][setting_a], b["firsts"][setting_b]
        _check_same_problems(firsts_a, firsts_b, name_a, name_b)
        problems.update(json.dumps(t.problem, sort_keys=True) for t in firsts_a)
        for window in windows:
            rows[setting_a, setting_b, window] = paired(_solved(firsts_a, window), _solved(firsts_b, window))
    return PairTable(a["method"], b["method"], problems, rows)


def _pooled(tables: list[PairTable], pairs: list[tuple]) -> dict[tuple, dict]:
    """Counts summed over pairs on disjoint problems, for the (settings, window) rows every pair has."""
    for i, j in combinations(range(len(tables)), 2):
        shared = tables[i].problems & tables[j].problems
        if shared:
            raise UserError(f"{len(shared)} problems (the first: {min(shared)}) are in both the pair {' '.join(pairs[i])} "
                            f"and the pair {' '.join(pairs[j])}: pooled pairs need problems of their own")
    keys = [key for key in tables[0].rows if all(key in t.rows for t in tables[1:])]
    if not keys:
        settings = "; ".join(f"{' '.join(pair)}: {sorted({key[:2] for key in t.rows})}" for pair, t in zip(pairs, tables))
        raise UserError(f"the pairs share no (temperature, budget) settings to pool: {settings}")
    pooled = {}
    for key in keys:
        parts = [t.rows[key] for t in tables]
        total = {name: sum(part[name] for part in parts) for name in ("n", "both", "only_a", "only_b")}
        pooled[key] = {**total, "a": sum(part["a"] * part["n"] for part in parts) / total["n"],
                       "b": sum(part["b"] * part["n"] for part in parts) / total["n"],
                       "p": sign_test_p(total["only_a"], total["only_b"])}
    return pooled


def _print_rows(rows: dict[tuple, dict]) -> None:
    print(f"{'A: T':>5} {'budget':>6} {'B: T':>5} {'budget':>6} {'window':>7} {'n':>5} {'A':>7} {'B':>7} "
          f"{'both':>5} {'only A':>6} {'only B':>6} {'p':>7}")
    for (setting_a, setting_b, window), row in rows.items():
        p = "<0.001" if row["p"] < 0.001 else f"{row['p']:.3f}"
        print(f"{setting_a[0]:>5} {str(setting_a[1]):>6} {setting_b[0]:>5} {str(setting_b[1]):>6} "
              f"{'-' if window is None else window:>7} {row['n']:>5} {row['a']:>7.1%} {row['b']:>7.1%} "
              f"{row['both']:>5} {row['only_a']:>6} {row['only_b']:>6} {p:>7}")


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


def load_run(given: str) -> dict:
    """One eval run: its results file, and the first program of each problem for every setting it ran."""
    path = Path(given)
    if path.name.endswith(TRAJECTORIES_SUFFIX):
        path = path.with_name(path.name[:-len(TRAJECTORIES_SUFFIX)] + ".json")
    results = load_result_file(path)
    programs = _read_trajectories(path.with_name(path.stem + TRAJECTORIES_SUFFIX))
    firsts = {}
    for summary in results["settings"]:
        try:
            setting, problems, samples = (summary["temperature"], summary["budget"]), summary["problems"], summary["n"]
        except (KeyError, TypeError):
            raise UserError(f"{path}: a setting without temperature, budget, problems and n: {summary!r:.200}") from None
        runs = programs.get(setting, [])
        # eval rewrites the trajectories file from its first program but the results file only at its end, so an
        # interrupted re-run leaves a results file that does not describe the trajectories next to it
        if len(runs) != problems * samples:
            raise UserError(f"{path}: setting T={setting[0]} budget={setting[1]} reports {problems} problems x "
                            f"{samples} samples, but its trajectories file holds {len(runs)} programs "
                            "(an interrupted eval? re-run it)")
        firsts[setting] = [group[0] for group in by_problem(runs, samples)]
    return {"method": results["method"], "split": results.get("split"), "firsts": firsts}


def _read_trajectories(path: Path) -> dict[tuple, list[Trajectory]]:
    if not path.is_file():
        raise UserError(f"no trajectories at {path} (`apr-ds eval` writes them next to its results .json)")
    programs: dict[tuple, list[Trajectory]] = {}
    number = 0
    try:
        with open(path) as f:
            for number, line in enumerate(f, 1):
                if not line.strip():
                    continue
                record = json.loads(line)
                if not isinstance(record, dict):
                    raise TypeError(f"a JSON {type(record).__name__}, not an object")
                setting = (record.pop("temperature"), record.pop("budget"))
                programs.setdefault(setting, []).append(Trajectory.from_json(record))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a text file of JSON lines (compressed?)") from None
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(f"{path}:{number}: not an `apr-ds eval` trajectory ({type(e).__name__}: {e}; "
                        "written by another apr-ds version? re-run apr-ds eval)") from None
    return programs


def _paired_settings(a: dict, b: dict, name_a: str, name_b: str) -> list[tuple]:
    if len(a["firsts"]) == 1 and len(b["firsts"]) == 1:
        return [(next(iter(a["firsts"])), next(iter(b["firsts"])))]
    shared = [(setting, setting) for setting in a["firsts"] if setting in b["firsts"]]
    if not shared:
        raise UserError(f"{name_a} and {name_b} share no sampling setting (temperature, budget): "
                        f"{list(a['firsts'])} against {list(b['firsts'])}")
    return shared


def _check_same_problems(a: list[Trajectory], b: list[Trajectory], name_a: str, name_b: str) -> None:
    if len(a) != len(b):
        raise UserError(f"{name_a} has {len(a)} problems and {name_b} {len(b)}: "
                        "a paired comparison needs the same problems (same split and eval.num_problems)")
    for index, (x, y) in enumerate(zip(a, b)):
        if x.problem != y.problem:
            raise UserError(f"problem {index} differs: {x.problem} in {name_a}, {y.problem} in {name_b} "
                            "(a paired comparison needs the same split, data seed and eval.num_problems)")


def _solved(trajectories: list[Trajectory], window: int | None) -> list[bool]:
    return [solved_within(t, window) for t in trajectories]
