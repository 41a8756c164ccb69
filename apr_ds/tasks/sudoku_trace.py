"""Sudoku's trace lines: how they are written, the patterns that read them back, the prompts that start a thread,
and the grid a thread's own lines leave it at.

A thread is a depth-first search with backtracking, one short line per step:

    Grid: 1030 0401 2000 0012      the state line: the thread's starting grid (its prompt), 0 for a blank
    Place r1c2=2                   a placement: the chosen blank cell has one candidate, or it is a try
    Branch r2c1: 3 4               the chosen blank cell has several candidates: the ones to try
    Dead end at r3c2               a blank cell has no candidate left: undo
    Backtrack to r2c1              undo every placement back to and including the last one at r2c1; the next
                                   line places that cell's next candidate
    Solved: 1234 3421 2143 4312    the final answer: the last line of a thread that found the solution
    No solution                    the last line of a thread whose every branch failed

Rows and columns count from 1. Every digit is its own token in the domain tokenizer (a grid row holds at least
four digits, and cells and candidates are single digits). A spawn names one placement per child,
`<Start Sub Search 0> Place r2c1=3`; each child starts from `Grid:` with its placement made. The join reports
each child in spawn order, `<No Solution in Sub Search 0>` or `<Solved in Sub Search 1> 1234 3421 2143 4312`.
The markers and budget prefixes are every task's (`apr_ds.lang`). Lines end with a newline; prompts do not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterator, Sequence

from apr_ds.lang import (CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, JOIN_OPEN, SUB_CALL_BUDGET, TOKEN_BUDGET, join_block,
                         lines_outside_joins, spawn_block, strip_budget_prefixes, sub_call_budget_prefix,
                         token_budget_prefix)
from apr_ds.tasks.sudoku import grid_text, parse_grid

GRID, PLACE, BRANCH, DEAD_END, BACKTRACK, SOLVED = ("Grid: ", "Place r", "Branch r", "Dead end at r", "Backtrack to r",
                                                    "Solved: ")
NO_SOLUTION = "No solution"
START_CHILD, FAILED_CHILD, SOLVED_CHILD = "<Start Sub Search ", "<No Solution in Sub Search ", "<Solved in Sub Search "

TRACE_PHRASES = (
    GRID, PLACE, BRANCH, DEAD_END, BACKTRACK, SOLVED, NO_SOLUTION, CALL_OPEN, CALL_CLOSE, START_CHILD, "> Place r",
    JOIN_OPEN, JOIN_CLOSE, FAILED_CHILD, SOLVED_CHILD, TOKEN_BUDGET, SUB_CALL_BUDGET,
)
"""The phrases of the trace language, one token each in the domain tokenizer; their order is the id order."""

SAMPLE_TRACE = "Grid: 1030 0401 2000 0012\nPlace r1c2=2\nBranch r2c1: 3 4\nPlace r2c1=3\n"

# ---------------------------------------------------------------------------- writing


def cell_text(cell: int, size: int) -> str:
    """`1c2` for row 1, column 2 (the `r` ends the phrase before it)."""
    return f"{cell // size + 1}c{cell % size + 1}"


def state_text(cells, size: int) -> str:
    return GRID + grid_text(cells, size)


def place_line(cell: int, digit: int, size: int) -> str:
    return f"{PLACE}{cell_text(cell, size)}={digit}\n"


def branch_line(cell: int, digits: Sequence[int], size: int) -> str:
    return f"{BRANCH}{cell_text(cell, size)}: {' '.join(str(d) for d in digits)}\n"


def dead_end_line(cell: int, size: int) -> str:
    return f"{DEAD_END}{cell_text(cell, size)}\n"


def backtrack_line(cell: int, size: int) -> str:
    return f"{BACKTRACK}{cell_text(cell, size)}\n"


def solved_line(cells, size: int) -> str:
    return SOLVED + grid_text(cells, size) + "\n"


NO_SOLUTION_LINE = NO_SOLUTION + "\n"


def sudoku_spawn_block(placements: Sequence[tuple[int, int]], size: int) -> str:
    """A spawn of one child per (cell, digit) placement, in order."""
    return spawn_block([f"{START_CHILD}{i}> {PLACE}{cell_text(cell, size)}={digit}\n"
                        for i, (cell, digit) in enumerate(placements)])


def sudoku_join_block(results: Sequence[str | None]) -> str:
    """`results` holds each child's solved grid text, or None, in spawn order."""
    return join_block([f"{FAILED_CHILD}{i}>\n" if grid is None else f"{SOLVED_CHILD}{i}> {grid}\n"
                       for i, grid in enumerate(results)])


def sosp_prompt(cells, size: int, token_budget: int | None = None) -> str:
    return token_budget_prefix(token_budget) + state_text(cells, size)


def apr_prompt(cells, size: int, sub_call_budget: int | None = None, token_budget: int | None = None) -> str:
    return sub_call_budget_prefix(sub_call_budget) + child_prompt(cells, size, token_budget)


def child_prompt(cells, size: int, token_budget: int | None = None) -> str:
    """A child starts from its grid alone. A parent's token budget is copied to its children; its sub call budget
    is not (as Countdown's)."""
    return token_budget_prefix(token_budget) + state_text(cells, size)


# ---------------------------------------------------------------------------- reading

_CELL = r"(\d)c(\d)"
_GRID = r"(\d+(?: \d+)*)"
GRID_RE = re.compile(r"^Grid: " + _GRID + r"$")
PLACE_RE = re.compile(r"^Place r" + _CELL + r"=(\d)$")
BRANCH_RE = re.compile(r"^Branch r" + _CELL + r": (\d(?: \d)*)$")
DEAD_END_RE = re.compile(r"^Dead end at r" + _CELL + r"$")
BACKTRACK_RE = re.compile(r"^Backtrack to r" + _CELL + r"$")
SOLVED_RE = re.compile(r"^Solved: " + _GRID + r"$")
START_RE = re.compile(r"^<Start Sub Search (\d+)> Place r" + _CELL + r"=(\d)$")

LINE_PATTERNS = (("state", GRID, GRID_RE), ("place", PLACE, PLACE_RE), ("branch", BRANCH, BRANCH_RE),
                 ("dead_end", DEAD_END, DEAD_END_RE), ("backtrack", BACKTRACK, BACKTRACK_RE),
                 ("solved", SOLVED, SOLVED_RE))
"""Each line kind, how its lines start, and the pattern a well-formed one matches."""
LINE_KIND_NAMES = ("state", "place", "branch", "dead_end", "backtrack", "solved", "no_solution", "other")


def line_kind(line: str) -> str:
    """The kind of a trace line outside spawn and join blocks; a prompt's budget prefixes are skipped."""
    line = strip_budget_prefixes(line)
    kind = next((kind for kind, start, _ in LINE_PATTERNS if line.startswith(start)), None)
    if kind:
        return kind
    return "no_solution" if line == NO_SOLUTION else "other"


def cell_at(m: re.Match, first: int, size: int) -> int | None:
    """The cell index of the row and column groups `first`, `first + 1` of a match; None when off the grid."""
    row, col = int(m.group(first)), int(m.group(first + 1))
    return (row - 1) * size + col - 1 if 1 <= row <= size and 1 <= col <= size else None


@dataclass(frozen=True)
class Line:
    """One line of a thread's text outside join blocks."""

    start: int
    """Offset of the line in the text."""
    body_start: int
    """Offset of the line's body (after any budget prefixes)."""
    body: str
    complete: bool
    """It ends with a newline (the context may cut the last line)."""
    kind: str
    match: re.Match | None
    """Its kind's pattern's match; None when it does not parse."""


def read_lines(text: str) -> Iterator[Line]:
    """Every line of `text` outside join blocks (they copy children's results), with its kind and parse."""
    for start, line, complete in lines_outside_joins(text):
        body = strip_budget_prefixes(line)
        kind = line_kind(body)
        pattern = next((p for k, _, p in LINE_PATTERNS if k == kind), None)
        yield Line(start, start + len(line) - len(body), body, complete, kind, pattern.match(body) if pattern else None)


@dataclass
class ThreadGrid:
    """The grid a thread's lines leave it at: its `Grid:` line, then its placements and backtracks."""

    size: int
    givens: tuple[int, ...]
    cells: list[int]
    placed: list[tuple[int, int]] = field(default_factory=list)
    """(cell, the value it held before) per placement on the current path, oldest first."""

    @staticmethod
    def start(match: re.Match) -> "ThreadGrid | None":
        """From a `Grid:` line's match; None when it is not a grid of a supported size with digits in range."""
        parsed = parse_grid(match.group(1))
        if parsed is None or max(parsed[1]) > parsed[0]:
            return None
        return ThreadGrid(parsed[0], parsed[1], list(parsed[1]))

    def place(self, cell: int, digit: int) -> None:
        self.placed.append((cell, self.cells[cell]))
        self.cells[cell] = digit

    def backtrack(self, cell: int) -> bool:
        """Undo placements back to and including the last one at `cell`; False (and nothing undone) when no
        placement on the path is at `cell`."""
        if all(placed != cell for placed, _ in self.placed):
            return False
        while True:
            placed, before = self.placed.pop()
            self.cells[placed] = before
            if placed == cell:
                return True

    def follow(self, line: Line) -> None:
        """Apply a placement or backtrack line that parses and names a cell of the grid; other lines change nothing."""
        if line.match is None or line.kind not in ("place", "backtrack"):
            return
        cell = cell_at(line.match, 1, self.size)
        if cell is None:
            return
        if line.kind == "place" and 1 <= int(line.match.group(3)) <= self.size:
            self.place(cell, int(line.match.group(3)))
        elif line.kind == "backtrack":
            self.backtrack(cell)


def thread_grid(text: str) -> ThreadGrid | None:
    """The grid at the end of a thread's text (its first `Grid:` line, then its moves); None without a grid."""
    grid = None
    for line in read_lines(text):
        if grid is None:
            if line.kind == "state" and line.match:
                grid = ThreadGrid.start(line.match)
            continue
        grid.follow(line)
    return grid
