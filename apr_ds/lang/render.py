"""Writing the task-independent parts of a trace: spawn and join blocks, and the conditioning prefixes.

A thread spawns by ending its output with a spawn block, one line per child between two markers; the runtime
replaces that block with a join block, one entry per child between two other markers, and resumes the thread.
What a child's line and a join entry say is the task's (`apr_ds.tasks`); the markers, and that each stands
alone on its line, are the same for every task. Lines end with a newline.
"""

from __future__ import annotations

from typing import Sequence

CALL_OPEN = "<Calling Sub Searches>"
CALL_CLOSE = "<End Calling Sub Searches>"
JOIN_OPEN = "<Sub Searches>"
JOIN_CLOSE = "<End Sub Searches>"
TOKEN_BUDGET = "Token Budget: "
SUB_CALL_BUDGET = "Sub Call Budget: "

BLOCK_PHRASES = (CALL_OPEN, CALL_CLOSE, JOIN_OPEN, JOIN_CLOSE, TOKEN_BUDGET, SUB_CALL_BUDGET)
"""Every task's traces hold these: the domain tokenizer makes each one token (`apr_ds.data.tokenizer`)."""


def spawn_block(child_lines: Sequence[str]) -> str:
    """The block that ends a parent's output: one line per child (each ending in a newline) between the markers."""
    return CALL_OPEN + "\n" + "".join(child_lines) + CALL_CLOSE + "\n"


def join_block(entries: Sequence[str]) -> str:
    """The block that replaces a spawn block: the children's results (each ending in a newline) between the markers."""
    return JOIN_OPEN + "\n" + "".join(entries) + JOIN_CLOSE + "\n"


def token_budget_prefix(budget: int | None) -> str:
    """Length conditioning: the prompt states how many tokens the trace may take."""
    return f"{TOKEN_BUDGET}{budget} " if budget is not None else ""


def sub_call_budget_prefix(count: int | None) -> str:
    """Child-count conditioning: the prompt states how many child threads the program may spawn."""
    return f"{SUB_CALL_BUDGET}{count} " if count is not None else ""


def strip_budget_prefixes(line: str) -> str:
    """A prompt's first line without the conditioning prefixes above (and their numbers)."""
    for prefix in (SUB_CALL_BUDGET, TOKEN_BUDGET):
        if line.startswith(prefix):
            line = line[len(prefix):].lstrip("0123456789 ")
    return line
