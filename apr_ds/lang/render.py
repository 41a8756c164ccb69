"""Every line of the trace language, byte-compatible with the APR reference (apr-reference §2.1-2.3).

Numbers print as Python list reprs (`[22, 26, 31, 53]`), operation lists as Python string-list reprs
(`['53-22=31']`), node ids as comma paths (`0,2,1`). Lines end with a newline; prompts do not (the
model writes the newline that follows them).
"""

from __future__ import annotations

from typing import Sequence

CALL_OPEN = "<Calling Sub Searches>"
CALL_CLOSE = "<End Calling Sub Searches>"
JOIN_OPEN = "<Sub Searches>"
JOIN_CLOSE = "<End Sub Searches>"
GOAL_REACHED = "Goal Reached"
NO_SOLUTION = "No solution found.\n"
SUB_SEARCH_FAILED = "No solution found in sub search\n"


def nums_text(nums: Sequence[int]) -> str:
    return "[" + ", ".join(str(n) for n in nums) + "]"


def ops_text(ops: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{op}'" for op in ops) + "]"


def state_text(target: int, nums: Sequence[int], ops: Sequence[str]) -> str:
    return f"Current State: {target}:{nums_text(nums)}, Operations: {ops_text(ops)}"


def state_line(target: int, nums: Sequence[int], ops: Sequence[str]) -> str:
    return state_text(target, nums, ops) + "\n"


def explore_line(op: str, nums: Sequence[int]) -> str:
    return f"Exploring Operation: {op}, Resulting Numbers: {nums_text(nums)}\n"


def generated_line(node_id: str, target: int, nums: Sequence[int], op: str) -> str:
    return f"Generated Node #{node_id}: {target}:{nums_text(nums)} Operation: {op}\n"


def move_line(node_id: str) -> str:
    return f"Moving to Node #{node_id}\n"


def goal_line(result: int, target: int) -> str:
    return f"{result},{target} equal: {GOAL_REACHED}\n"


def dead_end_line(result: int, target: int) -> str:
    return f"{result},{target} unequal: No Solution\n"


def sub_search_start_line(level: int, node_id: str) -> str:
    """SoS+ inline (sequential) sub search; not a spawn."""
    return f"Start Sub Search at level {level}: Moving to Node #{node_id}\n"


def sub_search_exit_line(level: int) -> str:
    return f"Exit Sub Search at level {level}\n"


def spawn_block(level: int, node_ids: Sequence[str]) -> str:
    lines = [CALL_OPEN + "\n"]
    lines += [f"<Start Sub Search {i} at level {level}> Moving to Node #{nid}\n" for i, nid in enumerate(node_ids)]
    lines.append(CALL_CLOSE + "\n")
    return "".join(lines)


def join_block(level: int, results: Sequence[tuple[str, str | None]]) -> str:
    """`results` holds (node id, child's summary path without its final newline, or None) in spawn order."""
    lines = [JOIN_OPEN + "\n"]
    for i, (nid, path) in enumerate(results):
        if path is None:
            lines.append(f"<No Solution in Sub Search {i} at level {level} at Node #{nid}>\n")
        else:
            lines.append(f"<Goal Reached in Sub Search {i} at level {level} at Node #{nid}>\n{path}\n")
    lines.append(JOIN_CLOSE + "\n")
    return "".join(lines)


def token_budget_prefix(budget: int | None) -> str:
    return f"Token Budget: {budget} " if budget is not None else ""


def sub_call_budget_prefix(count: int | None) -> str:
    return f"Sub Call Budget: {count} " if count is not None else ""


def sosp_prompt(target: int, nums: Sequence[int], token_budget: int | None = None) -> str:
    return token_budget_prefix(token_budget) + state_text(target, nums, [])


def apr_prompt(target: int, nums: Sequence[int], sub_call_budget: int | None = None,
               token_budget: int | None = None) -> str:
    return sub_call_budget_prefix(sub_call_budget) + token_budget_prefix(token_budget) + child_prompt("0", target, nums, [])


def child_prompt(node_id: str, target: int, nums: Sequence[int], ops: Sequence[str], token_budget: int | None = None) -> str:
    """A child thread starts from its node alone: no siblings, no parent history.
    A parent's `Token Budget` is copied to its children; `Sub Call Budget` is not (reference behaviour)."""
    return token_budget_prefix(token_budget) + move_line(node_id) + state_text(target, nums, ops)
