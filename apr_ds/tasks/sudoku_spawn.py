"""Running a Sudoku spawn: the children a spawn block names, their prompts, their results and the join.

A spawn block names one placement per child (`<Start Sub Search i> Place r2c1=3`); each child starts from the
grid the parent's own lines leave it at (its `Grid:` line, then its placements and backtracks), with its
placement made. Nothing here raises on model output: a block that cannot run is a `SpawnError` whose `kind` says
why (the structural kinds of `apr_ds.lang`, and bad_line, bad_numbering, unknown_node, wrong_numbers,
duplicate_child).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apr_ds.lang import SpawnError, split_spawn
from apr_ds.tasks.sudoku import candidates
from apr_ds.tasks.sudoku_trace import SOLVED_RE, START_RE, cell_at, sudoku_join_block, thread_grid


@dataclass(frozen=True)
class ChildCall:
    """One child of a spawn: the grid it starts from (`SudokuTask.child_prompt` writes its prompt)."""

    index: int
    cell: int
    digit: int
    size: int
    cells: tuple[int, ...]


@dataclass(frozen=True)
class Spawn:
    children: tuple[ChildCall, ...]
    prefix: str = field(repr=False)
    """The parent's text before the spawn block; the join continuation starts from it."""


def parse_spawn(text: str, check_numbers: bool = True) -> Spawn | SpawnError:
    """Parse the spawn block that ends a parent's output (trailing newlines allowed).

    check_numbers=True refuses a child whose placement is not on a blank cell or repeats a digit of its row,
    column or box (`wrong_numbers`). False starts the child from the grid its placement makes whatever it is; the
    strict verifier still checks the final answer against the puzzle's givens, so a wrong placement never counts
    as a solve. Structural faults (no grid, bad lines, ...) fail either way."""
    block = split_spawn(text)
    if isinstance(block, SpawnError):
        return block
    grid = thread_grid(block.prefix)
    if grid is None:
        return SpawnError("unknown_node", "the thread states no grid (a `Grid:` line) before its spawn")
    children: list[ChildCall] = []
    for i, line in enumerate(block.lines):
        start = START_RE.match(line)
        cell = cell_at(start, 2, grid.size) if start else None
        if cell is None or not 1 <= int(start.group(4)) <= grid.size:
            return SpawnError("bad_line", f"line {i + 1} of the spawn block is not a placement on the grid: {line[:80]!r}")
        index, digit = int(start.group(1)), int(start.group(4))
        if index != i:
            return SpawnError("bad_numbering", f"sub search {index} is listed in position {i}")
        if any(c.cell == cell and c.digit == digit for c in children):
            return SpawnError("duplicate_child", f"the placement {line.split('> ', 1)[-1]} is spawned twice")
        if check_numbers and (grid.cells[cell] or digit not in candidates(grid.cells, cell, grid.size)):
            why = "is not blank" if grid.cells[cell] else f"cannot hold {digit}: its row, column or box has it"
            return SpawnError("wrong_numbers", f"sub search {i}: the cell {why}")
        cells = list(grid.cells)
        cells[cell] = digit
        children.append(ChildCall(i, cell, digit, grid.size, tuple(cells)))
    return Spawn(tuple(children), block.prefix)


def child_result(output: str) -> str | None:
    """A child's message to its parent: the grid of its final `Solved:` line (the last line), or None."""
    lines = output.rstrip().split("\n")
    m = SOLVED_RE.match(lines[-1].strip())
    return m.group(1) if m else None


def join_text(spawn: Spawn, results: list[str | None]) -> str:
    """The parent's next prompt: its text with the spawn block replaced by the children's results."""
    if len(results) != len(spawn.children):
        raise ValueError(f"{len(results)} results for {len(spawn.children)} children")
    return spawn.prefix + sudoku_join_block(results)
