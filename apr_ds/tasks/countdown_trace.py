"""Countdown's trace lines, byte-compatible with the APR reference (apr-reference §2.1-2.3): how they are
written, the patterns that read them back, and the prompts that start a thread.

Numbers print as Python list reprs (`[22, 26, 31, 53]`), operation lists as Python string-list reprs
(`['53-22=31']`), node ids as comma paths (`0,2,1`). Lines end with a newline; prompts do not (the model
writes the newline that follows them). The spawn/join markers and the budget prefixes are every task's
(`apr_ds.lang`); the lines between the markers are Countdown's and are written here.
"""

from __future__ import annotations

import re
from typing import Sequence

from apr_ds.lang import (CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, JOIN_OPEN, SUB_CALL_BUDGET, TOKEN_BUDGET, join_block,
                         spawn_block, strip_budget_prefixes, sub_call_budget_prefix, token_budget_prefix)

GOAL_REACHED = "Goal Reached"
NO_SOLUTION = "No solution found.\n"
SUB_SEARCH_FAILED = "No solution found in sub search\n"

TRACE_PHRASES = (
    "Current State: ", ", Operations: ", "Exploring Operation: ", ", Resulting Numbers: ", "Generated Node #",
    " Operation: ", "Moving to Node #", " equal: Goal Reached", " unequal: No Solution", "No solution found.",
    "No solution found in sub search", "Start Sub Search at level ", "Exit Sub Search at level ",
    CALL_OPEN, CALL_CLOSE, "<Start Sub Search ", " at level ", "> Moving to Node #",
    JOIN_OPEN, JOIN_CLOSE, "<No Solution in Sub Search ", "<Goal Reached in Sub Search ",
    " at Node #", TOKEN_BUDGET, SUB_CALL_BUDGET, ": Moving to Node #",
)
"""The longest phrases of the trace language, one token each in the domain tokenizer; their order is the id order."""

SAMPLE_TRACE = "Current State: 24:[3, 8, 1], Operations: []\nExploring Operation: 3+8=11, Resulting Numbers: [1, 11]\n"

# ---------------------------------------------------------------------------- writing


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


def countdown_spawn_block(level: int, node_ids: Sequence[str]) -> str:
    """A spawn of one child per node, in order."""
    return spawn_block([f"<Start Sub Search {i} at level {level}> Moving to Node #{nid}\n" for i, nid in enumerate(node_ids)])


def countdown_join_block(level: int, results: Sequence[tuple[str, str | None]]) -> str:
    """`results` holds (node id, child's summary path without its final newline, or None) in spawn order."""
    entries = []
    for i, (nid, path) in enumerate(results):
        if path is None:
            entries.append(f"<No Solution in Sub Search {i} at level {level} at Node #{nid}>\n")
        else:
            entries.append(f"<Goal Reached in Sub Search {i} at level {level} at Node #{nid}>\n{path}\n")
    return join_block(entries)


def sosp_prompt(target: int, nums: Sequence[int], token_budget: int | None = None) -> str:
    return token_budget_prefix(token_budget) + state_text(target, nums, [])


def apr_prompt(target: int, nums: Sequence[int], sub_call_budget: int | None = None,
               token_budget: int | None = None) -> str:
    return sub_call_budget_prefix(sub_call_budget) + token_budget_prefix(token_budget) + child_prompt("0", target, nums, [])


def child_prompt(node_id: str, target: int, nums: Sequence[int], ops: Sequence[str], token_budget: int | None = None) -> str:
    """A child thread starts from its node alone: no siblings, no parent history.
    A parent's token budget is copied to its children; its sub call budget is not (reference behaviour)."""
    return token_budget_prefix(token_budget) + move_line(node_id) + state_text(target, nums, ops)


# ---------------------------------------------------------------------------- reading

_INT_LIST = r"\[((?:\d+(?:, \d+)*)?)\]"
_OP = r"(\d+)([+\-*/])(\d+)=(\d+)"
STATE_RE = re.compile(r"^Current State: (\d+):" + _INT_LIST + r", Operations: \[((?:'[^']*'(?:, '[^']*')*)?)\]$")
EXPLORE_RE = re.compile(r"^Exploring Operation: " + _OP + r", Resulting Numbers: " + _INT_LIST + r"$")
GENERATED_RE = re.compile(r"^Generated Node #(\d+(?:,\d+)*): (\d+):" + _INT_LIST + r" Operation: " + _OP + r"$")
MOVE_RE = re.compile(r"^Moving to Node #(\d+(?:,\d+)*)$")
GOAL_RE = re.compile(r"^(\d+),(\d+) equal: Goal Reached$")
START_RE = re.compile(r"^<Start Sub Search (\d+) at level (\d+)> Moving to Node #(\d+(?:,\d+)*)$")

LINE_STARTS = {"Current State:": "state", "Exploring Operation:": "operation", "Generated Node": "node"}
"""How each line that the per-line checks read starts, and its kind."""


LINE_KINDS = (("Current State:", "state"), ("Exploring Operation:", "operation"), ("Generated Node", "node"),
              ("Moving to Node", "move"), ("Start Sub Search at level", "sub_search"),
              ("Exit Sub Search at level", "sub_search"), ("No solution found", "no_solution"))
LINE_KIND_NAMES = ("state", "operation", "node", "move", "goal", "dead_end", "sub_search", "no_solution", "other")


def line_kind(line: str) -> str:
    """The kind of a trace line outside spawn and join blocks; a prompt's budget prefixes are skipped."""
    line = strip_budget_prefixes(line)
    kind = next((kind for start, kind in LINE_KINDS if line.startswith(start)), None)
    if kind:
        return kind
    if line.endswith(" equal: " + GOAL_REACHED):
        return "goal"
    return "dead_end" if line.endswith(" unequal: No Solution") else "other"


def parse_ints(text: str) -> tuple[int, ...]:
    """The numbers of an `_INT_LIST` group."""
    return tuple(int(x) for x in text.split(", ")) if text else ()


def parse_ops(text: str) -> tuple[str, ...]:
    """The operations of a state line's operations group."""
    return tuple(x.strip("'") for x in text.split(", ")) if text else ()


def operation_text(m: re.Match, first: int = 1) -> str:
    """`a+b=c` from the four `_OP` groups of a match, the first of them at group `first`."""
    return f"{m.group(first)}{m.group(first + 1)}{m.group(first + 2)}={m.group(first + 3)}"

