"""Sudoku: fill every blank so that each row, column and box holds every digit 1..n once.

Sizes 4 (boxes of 2x2), 6 (boxes of two rows by three columns) and 9 (3x3). A puzzle has exactly one solution:
the generator fills a random solved grid, then blanks its cells in a random order, keeping a blank only while an
exhaustive search still finds a single solution (it counts solutions up to 2), until `task.sudoku_blanks` cells
are blank. The number of blanks is the difficulty.

Splits, as Countdown's: train, val and test come from one stream of candidates, de-duplicated on the givens
across and within splits (test first, then val, then train, so growing train never changes the eval splits).
`test_unseen_targets` holds puzzles whose solution is a held-out solved grid: a fraction
`task.unseen_target_fraction` of all solved grids (chosen by a seeded hash of the grid) never is the solution of a
train, val or test puzzle, as Countdown holds targets out. The solution is what a puzzle asks for, so it plays
the target's part. At 4x4 there are only 288 solved grids and a model could recall a solution instead of
searching for it; this split asks for the search on solutions it never saw. At 9x9 a repeated solution is all but
impossible and the split is a second test split.

Problems are pure functions of (seed, stream, index), so any number of worker processes produces byte-identical splits.
"""

from __future__ import annotations

import itertools
import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache

BOX_SHAPES = {4: (2, 2), 6: (2, 3), 9: (3, 3)}
"""Rows and columns of one box, per grid size."""
MIN_GIVENS = {4: 4, 6: 8, 9: 17}
"""The fewest givens a puzzle of each size with a single solution can have (known results)."""
SIZES = tuple(BOX_SHAPES)


def max_blanks(size: int) -> int:
    return size * size - MIN_GIVENS[size]


# ---------------------------------------------------------------------------- the grid


def grid_text(cells, size: int) -> str:
    """Rows of digits separated by spaces, 0 for a blank: `1030 0401 2000 0012`. A row has at least 4 digits, so
    the domain tokenizer spells it digit by digit (it makes a whole token only of a number of up to 3 digits)."""
    return " ".join("".join(str(d) for d in cells[r * size:(r + 1) * size]) for r in range(size))


def parse_grid(text: str) -> tuple[int, tuple[int, ...]] | None:
    """(size, cells) of a grid's text: a supported number of rows, each that many digits. Digits are not
    range-checked here (the verifier names a wrong one); None when the shape is wrong."""
    rows = text.split(" ")
    size = len(rows)
    if size not in BOX_SHAPES or any(len(row) != size or not row.isdigit() or not row.isascii() for row in rows):
        return None
    return size, tuple(int(d) for row in rows for d in row)


@lru_cache(maxsize=None)
def units(size: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """The rows, the columns and the boxes of a grid, each a tuple of cell indices (row-major)."""
    box_rows, box_cols = BOX_SHAPES[size]
    rows = tuple(tuple(r * size + c for c in range(size)) for r in range(size))
    cols = tuple(tuple(r * size + c for r in range(size)) for c in range(size))
    boxes = tuple(tuple((top + i) * size + left + j for i in range(box_rows) for j in range(box_cols))
                  for top in range(0, size, box_rows) for left in range(0, size, box_cols))
    return rows, cols, boxes


@lru_cache(maxsize=None)
def cell_units(size: int) -> tuple[tuple[int, int, int], ...]:
    """Per cell, the index of its row, its column and its box."""
    box_rows, box_cols = BOX_SHAPES[size]
    return tuple((r, c, (r // box_rows) * (size // box_cols) + c // box_cols)
                 for r in range(size) for c in range(size))


@lru_cache(maxsize=None)
def peers(size: int) -> tuple[tuple[int, ...], ...]:
    """Per cell, every other cell of its row, column and box."""
    rows, cols, boxes = units(size)
    return tuple(tuple(sorted((set(rows[r]) | set(cols[c]) | set(boxes[b])) - {cell}))
                 for cell, (r, c, b) in enumerate(cell_units(size)))


def candidates(cells, cell: int, size: int) -> list[int]:
    """The digits cell `cell` may hold: those no peer holds, ascending."""
    used = {cells[p] for p in peers(size)[cell]}
    return [d for d in range(1, size + 1) if d not in used]


def most_constrained(cells, size: int) -> tuple[int | None, list[int]]:
    """The blank cell with the fewest candidates (the first in row-major order among ties) and its candidates;
    (None, []) when no cell is blank."""
    best, best_candidates = None, []
    for cell, value in enumerate(cells):
        if value:
            continue
        found = candidates(cells, cell, size)
        if best is None or len(found) < len(best_candidates):
            best, best_candidates = cell, found
            if not found:
                break
    return best, best_candidates


def first_blank(cells, size: int) -> tuple[int | None, list[int]]:
    """The first blank cell in row-major order and its candidates; (None, []) when no cell is blank."""
    cell = next((cell for cell, value in enumerate(cells) if not value), None)
    return (cell, candidates(cells, cell, size)) if cell is not None else (None, [])


CELL_CHOICES = {"most_constrained": most_constrained, "first_blank": first_blank}
"""How a search picks the cell to fill next (`solver.sudoku_cell_choice`)."""


def conflicts(cells, size: int) -> bool:
    """Some digit appears twice in a row, column or box (blanks aside)."""
    for unit in itertools.chain(*units(size)):
        digits = [cells[i] for i in unit if cells[i]]
        if len(digits) != len(set(digits)):
            return True
    return False


def count_solutions(cells, size: int, limit: int = 2) -> int:
    """Solutions of a grid, counted by exhaustive depth-first search up to `limit` (2 tells one from several)."""
    if conflicts(cells, size):
        return 0
    where, masks = cell_units(size), [[0] * size for _ in range(3)]
    for cell, value in enumerate(cells):
        for kind, unit in enumerate(where[cell]):
            masks[kind][unit] |= (1 << value) if value else 0
    full = ((1 << (size + 1)) - 1) & ~1
    blanks = [cell for cell, value in enumerate(cells) if not value]

    def search(left: list[int]) -> int:
        if not left:
            return 1
        # the blank with the fewest free digits: a dead end shows at once and forced cells cost no branching
        best, best_free = 0, full
        for i, cell in enumerate(left):
            r, c, b = where[cell]
            free = full & ~(masks[0][r] | masks[1][c] | masks[2][b])
            if free.bit_count() < best_free.bit_count() or i == 0:
                best, best_free = i, free
                if not free:
                    return 0
        cell, rest = left[best], left[:best] + left[best + 1:]
        found = 0
        for digit in range(1, size + 1):
            if best_free >> digit & 1:
                for mask, unit in zip(masks, where[cell]):
                    mask[unit] |= 1 << digit
                found += search(rest)
                for mask, unit in zip(masks, where[cell]):
                    mask[unit] &= ~(1 << digit)
                if found >= limit:
                    break
        return found
    return search(blanks)


def random_solution(size: int, rng: random.Random) -> tuple[int, ...]:
    """A solved grid: depth-first fill of the most constrained cell with its candidates in random order."""
    cells = [0] * (size * size)

    def fill() -> bool:
        cell, found = most_constrained(cells, size)
        if cell is None:
            return True
        rng.shuffle(found)
        for digit in found:
            cells[cell] = digit
            if fill():
                return True
        cells[cell] = 0
        return False
    fill()
    return tuple(cells)


@dataclass(frozen=True)
class Puzzle:
    size: int
    givens: tuple[int, ...]
    """Row-major, 0 for a blank."""

    @property
    def key(self) -> tuple[int, tuple[int, ...]]:
        """De-duplication key: the grid of givens (a puzzle has one solution, so it decides the rest)."""
        return self.size, self.givens

    def to_json(self) -> dict:
        return {"size": self.size, "grid": grid_text(self.givens, self.size)}

    @staticmethod
    def from_json(obj: dict) -> "Puzzle":
        parsed = parse_grid(str(obj["grid"]))
        if parsed is None or parsed[0] != int(obj["size"]) or max(parsed[1]) > parsed[0]:
            raise ValueError(f"grid {obj['grid']!r} is not a {obj['size']}x{obj['size']} Sudoku grid")
        return Puzzle(*parsed)


def blank_out(solution: tuple[int, ...], size: int, blanks: int, rng: random.Random) -> tuple[int, ...] | None:
    """Blank cells of a solved grid in a random order, each only if the puzzle keeps a single solution, until
    `blanks` are blank; None when no order-consistent choice gets there. Blanking more never removes solutions,
    so a cell refused once stays refused: one pass is the whole greedy search."""
    cells, order, done = list(solution), list(range(size * size)), 0
    rng.shuffle(order)
    for cell in order:
        if done == blanks:
            break
        cells[cell] = 0
        if count_solutions(cells, size) == 1:
            done += 1
        else:
            cells[cell] = solution[cell]
    return tuple(cells) if done == blanks else None


# ---------------------------------------------------------------------------- generation


def is_heldout(solution: tuple[int, ...], size: int, fraction: float, seed: int) -> bool:
    """Whether a solved grid is reserved for `test_unseen_targets`: a seeded hash of the grid, under `fraction`."""
    return random.Random(f"apr-ds:sudoku-heldout:{seed}:{grid_text(solution, size)}").random() < fraction


def draw_puzzle(seed: int, stream: str, index: int, size: int, blanks: int, fraction: float,
                max_tries: int = 2_000) -> Puzzle:
    """Candidate `index` of a stream ("seen" or "unseen"): solved grids are drawn until one belongs to the stream
    and can be blanked to `blanks` cells with a single solution."""
    rng = random.Random(f"apr-ds:sudoku:{seed}:{stream}:{index}")
    for _ in range(max_tries):
        solution = random_solution(size, rng)
        if is_heldout(solution, size, fraction, seed) != (stream == "unseen"):
            continue
        givens = blank_out(solution, size, blanks, rng)
        if givens is not None:
            return Puzzle(size, givens)
    raise ValueError(f"no {size}x{size} puzzle with {blanks} blanks and a single solution after {max_tries} solved "
                     f"grids; lower task.sudoku_blanks (at most {max_blanks(size)} is possible, far fewer is practical)")


def _draw_chunk(args: tuple) -> list[Puzzle]:
    seed, stream, start, stop, size, blanks, fraction = args
    return [draw_puzzle(seed, stream, i, size, blanks, fraction) for i in range(start, stop)]


SPLITS = ("train", "val", "test", "test_unseen_targets")


def make_splits(cfg, workers: int = 1, chunk: int = 256, progress=None) -> dict[str, list[Puzzle]]:
    """Disjoint, de-duplicated splits. `cfg` is a TaskConfig.

    Candidates are walked in index order, so the result depends neither on `workers` nor on `chunk` (drawing a
    9x9 puzzle takes a while, so each round draws only about as many as are still missing)."""
    plan = [("seen", [("test", cfg.num_test), ("val", cfg.num_val), ("train", cfg.num_train)]),
            ("unseen", [("test_unseen_targets", cfg.num_test_unseen_targets)])]
    splits: dict[str, list[Puzzle]] = {name: [] for name in SPLITS}
    seen_keys: set = set()
    pool = None
    if workers > 1:
        import multiprocessing as mp
        pool = mp.get_context("spawn" if _needs_spawn() else "fork").Pool(workers)
    try:
        for stream, wanted in plan:
            need = [(name, count) for name, count in wanted if count > 0]
            if need and stream == "unseen" and cfg.unseen_target_fraction <= 0:
                raise ValueError("test_unseen_targets needs held-out solutions; set task.unseen_target_fraction > 0")
            index, stale = 0, 0
            while need:
                missing = sum(count - len(splits[name]) for name, count in need)
                step = max(1, min(chunk, math.ceil(missing * 1.1 / max(workers, 1))))
                jobs = [(cfg.seed, stream, s, s + step, cfg.sudoku_size, cfg.sudoku_blanks, cfg.unseen_target_fraction)
                        for s in range(index, index + step * max(workers, 1), step)]
                index += step * max(workers, 1)
                batches = pool.map(_draw_chunk, jobs) if pool else [_draw_chunk(j) for j in jobs]
                added = _take(itertools.chain.from_iterable(batches), need, splits, seen_keys, progress)
                stale = 0 if added else stale + 1
                if stale >= 20:
                    raise ValueError(f"only {sum(len(splits[n]) for n, _ in wanted)} distinct puzzles found for "
                                     f"{sum(c for _, c in wanted)} wanted ({stream} solutions); lower task.num_* or "
                                     f"change task.sudoku_blanks")
    finally:
        if pool:
            pool.close()
            pool.join()
    return splits


def _take(candidates_in_order, need: list, splits: dict, seen_keys: set, progress) -> int:
    """File new candidates into the first split still short of its count; returns how many were added."""
    added = 0
    for puzzle in candidates_in_order:
        if not need:
            break
        if puzzle.key in seen_keys:
            continue
        seen_keys.add(puzzle.key)
        splits[need[0][0]].append(puzzle)
        added += 1
        if progress:
            progress(1)
        if len(splits[need[0][0]]) == need[0][1]:
            need.pop(0)
    return added


def problems_beyond_train(cfg, count: int, workers: int = 1) -> list[Puzzle]:
    """`count` puzzles drawn right after the train split: disjoint from train, val and test (as Countdown's)."""
    grown = replace(cfg, num_train=cfg.num_train + count, num_test_unseen_targets=0)
    return make_splits(grown, workers)["train"][cfg.num_train:]


def _needs_spawn() -> bool:
    import sys
    return sys.platform == "darwin"
