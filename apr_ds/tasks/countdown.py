"""Countdown: combine the input numbers with + - * / to reach the target (APR rules).

Rules, as in the APR reference (`combine_nums`):
- two numbers at a time until one is left, so every input is used exactly once;
- `a+b` and `a*b` are written in the order the pair was taken;
- subtraction is larger-smaller (results >= 0, 0 allowed), written larger first;
- division is larger/smaller, only when exact and the divisor is not 0, written larger first.

Problems are pure functions of (seed, stream, index), so any number of worker
processes produces byte-identical splits.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache


@dataclass(frozen=True)
class Problem:
    nums: tuple[int, ...]
    target: int

    @property
    def key(self) -> tuple[tuple[int, ...], int]:
        """De-duplication key: the multiset of numbers and the target."""
        return tuple(sorted(self.nums)), self.target

    def to_json(self) -> dict:
        return {"nums": list(self.nums), "target": self.target}

    @staticmethod
    def from_json(obj: dict) -> "Problem":
        return Problem(tuple(int(n) for n in obj["nums"]), int(obj["target"]))


def combine(a: int, b: int) -> list[tuple[int, str]]:
    """Every legal (result, operation string) for the pair (a, b)."""
    out = [(a + b, f"{a}+{b}={a + b}"), (a * b, f"{a}*{b}={a * b}")]
    hi, lo = (b, a) if a <= b else (a, b)
    out.append((hi - lo, f"{hi}-{lo}={hi - lo}"))
    if lo != 0 and hi % lo == 0:
        out.append((hi // lo, f"{hi}/{lo}={hi // lo}"))
    return out


def successors(nums: tuple[int, ...] | list[int]) -> list[tuple[list[int], str]]:
    """All states one operation away: the untouched numbers in order, then the result (reference order)."""
    out = []
    for i, j in itertools.combinations(range(len(nums)), 2):
        rest = [nums[k] for k in range(len(nums)) if k != i and k != j]
        for result, op in combine(nums[i], nums[j]):
            out.append((rest + [result], op))
    return out


def apply_op(nums: tuple[int, ...], a: int, sign: str, b: int, result: int) -> tuple[tuple[int, ...] | None, str]:
    """Replay one written operation on a multiset of numbers. Returns (new numbers, '') or (None, why it is illegal)."""
    pool = list(nums)
    for operand in (a, b):
        if operand not in pool:
            return None, f"{operand} not available in {list(nums)}"
        pool.remove(operand)
    if sign == "+":
        ok = a + b == result
    elif sign == "*":
        ok = a * b == result
    elif sign == "-":
        if a < b:
            return None, f"subtraction {a}-{b} must be written larger first"
        ok = a - b == result
    else:
        if b == 0 or a % b:
            return None, f"division {a}/{b} is not exact"
        ok = a // b == result
    if not ok:
        return None, f"arithmetic {a}{sign}{b}={result} is wrong"
    return tuple(pool) + (result,), ""


OPERATORS = "+-*/"


@lru_cache(maxsize=200_000)
def _solve_sorted(nums: tuple[int, ...], target: int, operators: str) -> tuple[str, ...] | None:
    if len(nums) == 1:
        return () if nums[0] == target else None
    for new_nums, op in successors(nums):
        # An operation string holds exactly one operator (no number is negative)
        if operators != OPERATORS and not any(sign in op for sign in operators):
            continue
        rest = _solve_sorted(tuple(sorted(new_nums)), target, operators)
        if rest is not None:
            return (op,) + rest
    return None


def solve(problem: Problem, operators: str = OPERATORS) -> list[str] | None:
    """One solution (a list of operation strings) by exhaustive search using only `operators`, or None."""
    found = _solve_sorted(tuple(sorted(problem.nums)), problem.target, operators)
    return list(found) if found is not None else None


# ---------------------------------------------------------------------------- generation


def heldout_targets(min_target: int, max_target: int, fraction: float, seed: int) -> frozenset[int]:
    """Targets reserved for `test_unseen_targets` (Stream of Search holds out 10% of 10..100)."""
    targets = list(range(min_target, max_target + 1))
    random.Random(f"apr-ds:heldout:{seed}").shuffle(targets)
    count = math.ceil(fraction * len(targets)) if fraction > 0 else 0
    return frozenset(targets[:count])


def draw_problem(seed: int, stream: str, index: int, targets: tuple[int, ...], num_numbers: int,
                 min_number: int, max_number: int, max_tries: int = 10_000) -> Problem:
    """Candidate `index` of a stream: the target first, then numbers redrawn until solvable (as APR does)."""
    rng = random.Random(f"apr-ds:{seed}:{stream}:{index}")
    target = rng.choice(targets)
    for _ in range(max_tries):
        nums = tuple(rng.randint(min_number, max_number) for _ in range(num_numbers))
        problem = Problem(nums, target)
        if solve(problem) is not None:
            return problem
    raise ValueError(f"no solvable problem for target {target} with {num_numbers} numbers in {min_number}..{max_number} "
                     f"after {max_tries} draws; widen task.min_number..task.max_number or change task.num_numbers")


def _draw_chunk(args: tuple) -> list[Problem]:
    seed, stream, start, stop, targets, num_numbers, lo, hi = args
    return [draw_problem(seed, stream, i, targets, num_numbers, lo, hi) for i in range(start, stop)]


SPLITS = ("train", "val", "test", "test_unseen_targets")


def make_splits(cfg, workers: int = 1, chunk: int = 512, progress=None) -> dict[str, list[Problem]]:
    """Disjoint, de-duplicated splits. `cfg` is a TaskConfig.

    Candidates come from two streams: one over the seen targets (filling test, val, then train, so
    growing train never changes the eval splits) and one over the held-out targets. De-duplication
    walks candidates in index order, so the result does not depend on `workers`.
    """
    held = heldout_targets(cfg.min_target, cfg.max_target, cfg.unseen_target_fraction, cfg.seed)
    seen = tuple(t for t in range(cfg.min_target, cfg.max_target + 1) if t not in held)
    if not seen:
        raise ValueError("task.unseen_target_fraction leaves no targets for train/val/test")
    plan = [("seen", seen, [("test", cfg.num_test), ("val", cfg.num_val), ("train", cfg.num_train)]),
            ("unseen", tuple(sorted(held)), [("test_unseen_targets", cfg.num_test_unseen_targets)])]
    splits: dict[str, list[Problem]] = {name: [] for name in SPLITS}
    seen_keys: set = set()
    pool = None
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("spawn" if _needs_spawn() else "fork").Pool(workers)
    try:
        for stream, targets, wanted in plan:
            need = [(name, count) for name, count in wanted if count > 0]
            if not need:
                continue
            if not targets:
                raise ValueError(f"split {need[0][0]} needs held-out targets; set task.unseen_target_fraction > 0")
            index, stale = 0, 0
            while need:
                jobs = [(cfg.seed, stream, s, s + chunk, targets, cfg.num_numbers, cfg.min_number, cfg.max_number)
                        for s in range(index, index + chunk * max(workers, 1), chunk)]
                index += chunk * max(workers, 1)
                batches = pool.map(_draw_chunk, jobs) if pool else [_draw_chunk(j) for j in jobs]
                added = 0
                for problem in itertools.chain.from_iterable(batches):
                    if not need:
                        break
                    if problem.key in seen_keys:
                        continue
                    seen_keys.add(problem.key)
                    splits[need[0][0]].append(problem)
                    added += 1
                    if progress:
                        progress(1)
                    if len(splits[need[0][0]]) == need[0][1]:
                        need.pop(0)
                stale = 0 if added else stale + 1
                if stale >= 20:
                    have = sum(len(splits[n]) for n, _ in wanted)
                    raise ValueError(f"only {have} distinct problems exist in this task range; asked for "
                                     f"{sum(c for _, c in wanted)} ({stream} targets). Lower task.num_* or widen the ranges")
    finally:
        if pool:
            pool.close()
            pool.join()
    return splits


def problems_beyond_train(cfg, count: int, workers: int = 1) -> list[Problem]:
    """`count` problems drawn right after the train split: disjoint from train, val and test, so a model trained on
    `cfg`'s splits never saw them. More held-out problems without moving any split (growing test would shift val
    and train, which are filled after it)."""
    grown = replace(cfg, num_train=cfg.num_train + count, num_test_unseen_targets=0)
    return make_splits(grown, workers)["train"][cfg.num_train:]


def _needs_spawn() -> bool:
    import sys
    return sys.platform == "darwin"
