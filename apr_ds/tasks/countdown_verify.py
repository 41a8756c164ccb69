"""Countdown's strict verifier: replay the solution path a main thread wrote from the problem's own numbers."""

from __future__ import annotations

from apr_ds.tasks.countdown import Problem, apply_op
from apr_ds.tasks.countdown_trace import (EXPLORE_RE, GENERATED_RE, GOAL_REACHED, GOAL_RE, MOVE_RE, STATE_RE,
                                          nums_text, operation_text, parse_ints, parse_ops)
from apr_ds.tasks.task import Verdict, verify_text


def extract_solution_path(output: str) -> str | None:
    """The summary path: text after the second-to-last `Goal Reached` (the APR reference's rule)."""
    first = output.rfind(GOAL_REACHED)
    if first < 0:
        return None
    second = output.rfind(GOAL_REACHED, 0, first)
    if second < 0:
        return None
    return output[second + len(GOAL_REACHED):first + len(GOAL_REACHED)]


def verify(problem: Problem, output) -> Verdict:
    """Strict check of a main-thread output: replay its solution path from the original numbers.

    Success needs every step to use numbers that are present (as a multiset), correct and legal
    arithmetic (subtraction larger-first and >= 0, exact division by non-zero), every state line in
    the path to agree with the replay, and the path to end at exactly [target]. Never raises.
    """
    return verify_text(output, lambda output: replay_path(problem, extract_solution_path(output)))


def replay_path(problem: Problem, path: str | None) -> Verdict:
    """Strictly check a solution path against `problem`, line by line."""
    if path is None:
        return Verdict(False, "no solution path: fewer than two 'Goal Reached'")
    nums, ops, target = tuple(problem.nums), [], problem.target
    steps = 0
    for line in path.split("\n"):
        line = line.strip()
        if not line or MOVE_RE.match(line):
            continue
        if (m := STATE_RE.match(line)):
            if int(m.group(1)) != target or sorted(parse_ints(m.group(2))) != sorted(nums) or list(parse_ops(m.group(3))) != ops:
                return Verdict(False, f"state line disagrees with the replay: {line[:120]!r}")
        elif (m := GENERATED_RE.match(line)):
            if int(m.group(2)) != target or sorted(parse_ints(m.group(3))) != sorted(nums) or not ops or operation_text(m, 4) != ops[-1]:
                return Verdict(False, f"generated-node line disagrees with the replay: {line[:120]!r}")
        elif (m := EXPLORE_RE.match(line)):
            a, sign, b, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            steps += 1
            new, why = apply_op(nums, a, sign, b, result)
            if new is None:
                return Verdict(False, f"step {steps}: {why}")
            if sorted(new) != sorted(parse_ints(m.group(5))):
                return Verdict(False, f"step {steps}: resulting numbers [{m.group(5)}] should be {nums_text(sorted(new))}")
            nums = new
            ops.append(f"{a}{sign}{b}={result}")
        elif (m := GOAL_RE.match(line)):
            if int(m.group(2)) != target:
                return Verdict(False, f"goal line names target {m.group(2)}, the problem's is {target}")
            if nums != (target,) or int(m.group(1)) != target:
                return Verdict(False, f"goal claimed with numbers {nums_text(nums)}, need [{target}]")
            return Verdict(True, "ok", tuple(ops))
        else:
            return Verdict(False, f"unexpected line in the solution path: {line[:120]!r}")
    return Verdict(False, "the solution path ends without a goal line")


def claimed_answer(output: str) -> tuple[str, ...] | None:
    """The operations of the solution path a main-thread output claims (unverified), or None."""
    path = extract_solution_path(output)
    if path is None:
        return None
    ops = []
    for line in path.split("\n"):
        m = EXPLORE_RE.match(line.strip())
        if m:
            ops.append(operation_text(m))
    return tuple(ops) or None
