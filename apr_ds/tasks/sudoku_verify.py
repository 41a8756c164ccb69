"""Sudoku's strict verifier: the grid on a main thread's final-answer line against the puzzle."""

from __future__ import annotations

from apr_ds.tasks.sudoku import Puzzle, parse_grid, units
from apr_ds.tasks.sudoku_trace import SOLVED_RE
from apr_ds.tasks.task import Verdict, verify_text


def final_answer(output: str) -> str | None:
    """The grid text of the final-answer line: the output's last non-empty line, when it is a `Solved:` line.
    A thread ends with its answer, so text after it (or an answer only inside a join block) is no answer."""
    lines = output.rstrip().split("\n")
    m = SOLVED_RE.match(lines[-1])
    return m.group(1) if m else None


def verify(problem: Puzzle, output) -> Verdict:
    """Strict check of a main-thread output's final answer: a grid of the puzzle's size that keeps every given,
    fills every blank with a digit 1..n, and makes every row, column and box a permutation of 1..n. Never raises."""
    return verify_text(output, lambda output: check_grid(problem, final_answer(output)))


def check_grid(problem: Puzzle, text: str | None) -> Verdict:
    """Strictly check an answer's grid text against `problem`, cell by cell, then unit by unit."""
    if text is None:
        return Verdict(False, "no final answer: the output does not end with a 'Solved: ' line")
    size = problem.size
    parsed = parse_grid(text)
    if parsed is None or parsed[0] != size:
        return Verdict(False, f"the answer {text[:120]!r} is not {size} rows of {size} digits")
    cells = parsed[1]
    for cell, (given, value) in enumerate(zip(problem.givens, cells)):
        where = f"r{cell // size + 1}c{cell % size + 1}"
        if given and value != given:
            return Verdict(False, f"{where} holds {value}, but its given is {given}")
        if not 1 <= value <= size:
            return Verdict(False, f"{where} holds {value}: every cell needs a digit 1..{size}")
    for name, group in zip(("row", "column", "box"), units(size)):
        for number, unit in enumerate(group, 1):
            if len({cells[i] for i in unit}) != size:
                return Verdict(False, f"{name} {number} repeats a digit")
    rows = text.split(" ")
    return Verdict(True, "ok", tuple(rows))


def claimed_answer(output: str) -> tuple[str, ...] | None:
    """The rows of the grid a main-thread output claims as its answer (unverified), or None."""
    text = final_answer(output)
    return tuple(text.split(" ")) if text else None
