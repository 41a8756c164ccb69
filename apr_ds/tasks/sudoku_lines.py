"""Per-line checks of Sudoku traces: which skills a model has before it solves anything.

Each line is checked against the grid the thread's own earlier lines leave it at (its `Grid:` line, then its
placements and backtracks; join blocks, which copy children's results, are skipped). For every `Place` line:

    given        the cell is not a given (a placement never overwrites the puzzle)
    blank        the cell is not already filled by an earlier placement on the current path
    row          the digit is not already in the cell's row
    column       ... nor in its column
    box          ... nor in its box
for every `Branch` and `Dead end` line:
    candidates   the cell is blank and the listed digits are exactly its candidates, ascending (none for a dead end)
for every `Backtrack` line:
    backtrack    the cell was placed on the current path (else there is nothing to go back to)
and for every complete line (one that ends in a newline: the context may cut the last) that starts like a
`Grid`, `Place`, `Branch`, `Dead end` or `Backtrack` line:
    format       the line parses and names a cell and digits of the grid. A line that does not escapes every
                 other check, so RL's line penalty (which reads these verdicts) would leave it free.
"""

from __future__ import annotations

import re
from collections import Counter

from apr_ds.tasks.sudoku import candidates, cell_units, units
from apr_ds.tasks.sudoku_trace import Line, ThreadGrid, cell_at, read_lines
from apr_ds.tasks.task import count_checks, failures_by_line, fraction_right

SKILLS = ("given", "blank", "row", "column", "box", "candidates", "backtrack", "format")
_WHOLE_LINE = re.compile(r".*")
_CHECKED_KINDS = ("state", "place", "branch", "dead_end", "backtrack")


def _placement_verdicts(grid: ThreadGrid, cell: int, digit: int) -> dict:
    """The skills of one `Place` line, against the grid it was written under."""
    verdicts = {"given": not grid.givens[cell], "blank": grid.cells[cell] == 0 or bool(grid.givens[cell])}
    for kind, group, index in zip(("row", "column", "box"), units(grid.size), cell_units(grid.size)[cell]):
        verdicts[kind] = all(grid.cells[other] != digit for other in group[index] if other != cell)
    return verdicts


def _verdicts(grid: ThreadGrid, line: Line) -> dict | None:
    """The skills of one line that parses, or None when it names something off the grid (a format fault)."""
    m, size = line.match, grid.size
    cell = cell_at(m, 1, size)
    if cell is None:
        return None
    if line.kind == "place":
        digit = int(m.group(3))
        return _placement_verdicts(grid, cell, digit) if 1 <= digit <= size else None
    if line.kind in ("branch", "dead_end"):
        listed = [int(d) for d in m.group(3).split(" ")] if line.kind == "branch" else []
        if any(not 1 <= d <= size for d in listed):
            return None
        return {"candidates": grid.cells[cell] == 0 and listed == candidates(grid.cells, cell, size)}
    return {"backtrack": any(placed == cell for placed, _ in grid.placed)}


def checked_lines(text: str):
    """Yields (the line, its match (the whole body for a line that does not parse), {skill: right}) for every
    checked line of a thread outside join blocks, in order."""
    grid = None
    for line in read_lines(text):
        if line.kind not in _CHECKED_KINDS:
            continue
        well_formed = {"format": True} if line.complete else {}
        if line.match is None:
            if line.complete:
                yield line, _WHOLE_LINE.match(line.body), {"format": False}
            continue
        if line.kind == "state":
            started = ThreadGrid.start(line.match)
            grid = grid or started  # a thread's first grid is its start; a later one is only read for its format
            if started is None:
                well_formed = {"format": False} if line.complete else {}
            yield line, line.match, well_formed
            continue
        if grid is None:
            continue
        verdicts = _verdicts(grid, line)
        if verdicts is None:
            yield line, _WHOLE_LINE.match(line.body), {"format": False} if line.complete else {}
            continue
        yield line, line.match, {**verdicts, **well_formed}
        grid.follow(line)


def count_lines(text: str) -> Counter:
    """Counts `{skill}` (right) and `{skill}_total` over one thread's text."""
    return count_checks(verdicts for _, _, verdicts in checked_lines(text))


# The part of its line each wrong skill names, as (first, last) regex group: a digit that repeats its row, column
# or box is the digit's mistake; a given or filled cell, a dead end that is not, and a backtrack with nothing to go
# back to are the cell's; wrong candidates are the list's. A line that does not parse answers for all of itself.
_WRONG_GROUPS = {"given": (1, 2), "blank": (1, 2), "row": (3, 3), "column": (3, 3), "box": (3, 3),
                 "backtrack": (1, 2), "format": (0, 0)}


def _wrong_group(skill: str, kind: str) -> tuple[int, int]:
    if skill == "candidates":
        return (3, 3) if kind == "branch" else (1, 2)
    return _WRONG_GROUPS[skill]


def wrong_spans(text: str) -> list[tuple[int, int]]:
    """Character spans [start, end) of `text` that a checked line got wrong: each wrong skill's own part."""
    spans = set()
    for line, m, verdicts in checked_lines(text):
        for skill, right in verdicts.items():
            if not right:
                first, last = _wrong_group(skill, line.kind)
                spans.add((line.body_start + m.start(first), line.body_start + m.end(last)))
    return sorted(spans)


def failed_checks(text: str) -> dict[int, list[str]]:
    """The skills each line of `text.splitlines()` got wrong, by line number."""
    return failures_by_line(text, ((line.start, verdicts) for line, _, verdicts in checked_lines(text)))


def line_diagnostics(texts) -> dict:
    """Fraction right per skill over all threads' texts, with the number of lines behind each."""
    return fraction_right(sum((count_lines(text) for text in texts), Counter()), SKILLS)
