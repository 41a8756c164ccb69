"""Symbolic Sudoku solvers that write SoS+ and APR traces: a depth-first search with backtracking.

Each step takes the blank cell `solver.sudoku_cell_choice` picks: the most constrained one (the fewest candidates;
the first in row-major order among ties), or the first in row-major order:
- no candidate: a dead end; backtrack to the latest branching cell with an untried candidate and place it;
- one candidate: place it;
- several: a branching cell. SoS+ tries its candidates one at a time, in an order drawn from the run's random
  source (so best-of-n samples differ), backtracking on failure, as "To Backtrack or Not"'s backtracking traces
  do. APR may instead spawn one child per candidate (ascending), each starting from the grid with its candidate
  placed; the join reports each child's solved grid or its failure, and the parent writes the first solved grid
  as its answer, or, when every child failed, backtracks and goes on (it may spawn again later).

A thread spawns at a branching cell with probability `solver.spawn_probability` when it is above
`solver.max_spawn_depth` (1: only the main thread spawns) and the cell has at most `solver.sudoku_max_children`
candidates. Each run is a `SolverRun`: the text of every main call, and per spawn the children's own runs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from apr_ds.tasks import sudoku_trace as trace
from apr_ds.tasks.sudoku import CELL_CHOICES, Puzzle, grid_text
from apr_ds.tasks.task import SolverRun


@dataclass
class Branch:
    """A branching cell the search is inside: the candidates not tried yet, and the path length before its try."""

    cell: int
    untried: list[int]
    depth: int


@dataclass(frozen=True)
class Spawning:
    """When an APR thread spawns (see the module docstring)."""

    probability: float
    max_depth: int
    max_children: int


class DepthFirstSearch:
    """One thread's search from its grid; `search` returns its run (with its children's, when it spawns)."""

    def __init__(self, size: int, rng: random.Random, choose=CELL_CHOICES["most_constrained"],
                 spawning: Spawning | None = None, level: int = 0):
        """`choose(cells, size)` gives the cell to fill next and its candidates (`sudoku.CELL_CHOICES`)."""
        self.size, self.rng, self.choose, self.spawning, self.level = size, rng, choose, spawning, level

    def search(self, grid, prompt: str) -> SolverRun:
        # The prompt is the thread's `Grid:` line, so it is an exact prefix of the first call's text.
        self.run = SolverRun(prompt, [prompt + "\n"])
        self.cells, self.path, self.branches = list(grid), [], []
        while True:
            cell, found = self.choose(self.cells, self.size)
            if cell is None:
                self.finish(tuple(self.cells))
                return self.run
            if not found:
                self.write(trace.dead_end_line(cell, self.size))
                if not self.backtrack():
                    return self.run
            elif len(found) == 1:
                self.place(cell, found[0])
            else:
                self.write(trace.branch_line(cell, found, self.size))
                if self.should_spawn(found):
                    if self.spawn(cell, found) or not self.backtrack():
                        return self.run
                else:
                    self.rng.shuffle(found)
                    self.branches.append(Branch(cell, found[1:], len(self.path)))
                    self.place(cell, found[0])

    def write(self, line: str) -> None:
        self.run.main_calls[-1] += line

    def place(self, cell: int, digit: int) -> None:
        self.cells[cell] = digit
        self.path.append(cell)
        self.write(trace.place_line(cell, digit, self.size))

    def finish(self, solution: tuple[int, ...]) -> None:
        self.write(trace.solved_line(solution, self.size))
        self.run.goal = solution

    def backtrack(self) -> bool:
        """Undo back to the latest branching cell with an untried candidate and place it; with none left, write
        that this thread found no solution and return False."""
        while self.branches and not self.branches[-1].untried:
            self.branches.pop()
        if not self.branches:
            self.write(trace.NO_SOLUTION_LINE)
            return False
        branch = self.branches[-1]
        while len(self.path) > branch.depth:
            self.cells[self.path.pop()] = 0
        self.write(trace.backtrack_line(branch.cell, self.size))
        self.place(branch.cell, branch.untried.pop(0))
        return True

    def should_spawn(self, found: list[int]) -> bool:
        s = self.spawning
        return (s is not None and self.level < s.max_depth and len(found) <= s.max_children
                and self.rng.random() < s.probability)

    def spawn(self, cell: int, found: list[int]) -> bool:
        """Run one child per candidate, close this main call with the spawn block and open the next with the join
        block. Returns True when a child solved the puzzle (this thread then writes its grid as its answer)."""
        children = []
        for digit in found:
            grid = list(self.cells)
            grid[cell] = digit
            child = DepthFirstSearch(self.size, self.rng, self.choose, self.spawning, self.level + 1)
            children.append(child.search(grid, trace.child_prompt(grid, self.size)))
        self.run.sub_calls.append(children)
        before = self.run.main_calls[-1]
        self.run.main_calls[-1] = before + trace.sudoku_spawn_block([(cell, digit) for digit in found], self.size)
        results = [grid_text(child.goal, self.size) if child.solved else None for child in children]
        self.run.main_calls.append(before + trace.sudoku_join_block(results))
        winner = next((child for child in children if child.solved), None)
        if winner is not None:
            self.finish(winner.goal)
        return winner is not None


# ---------------------------------------------------------------------------- entry points


def solve_sosp(problem: Puzzle, cfg, rng: random.Random) -> SolverRun:
    """`cfg` is a SolverConfig: of its settings SoS+ takes only the cell choice (the search has no beam)."""
    search = DepthFirstSearch(problem.size, rng, CELL_CHOICES[cfg.sudoku_cell_choice])
    return search.search(problem.givens, trace.sosp_prompt(problem.givens, problem.size))


def solve_apr(problem: Puzzle, cfg, rng: random.Random) -> SolverRun:
    spawning = Spawning(cfg.spawn_probability, cfg.max_spawn_depth, cfg.sudoku_max_children)
    search = DepthFirstSearch(problem.size, rng, CELL_CHOICES[cfg.sudoku_cell_choice], spawning)
    return search.search(problem.givens, trace.apr_prompt(problem.givens, problem.size))


SOLVERS = {"sosp": solve_sosp, "apr": solve_apr}
