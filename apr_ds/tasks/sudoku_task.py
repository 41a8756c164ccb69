"""Sudoku behind the Task interface.

    sudoku.py           the grid, exhaustive solution counting, the puzzle generator, the splits
    sudoku_trace.py     the trace lines and prompts: writing them, the patterns that read them, a thread's grid
    sudoku_solvers.py   the depth-first SoS+ and APR solvers that write the training traces
    sudoku_spawn.py     what the runtime does with a spawn block: children, their prompts, the join
    sudoku_verify.py    the strict verifier of the final-answer line
    sudoku_lines.py     the per-line checks (eval's diagnostics, RL's line penalty, the trace viewer)
"""

from __future__ import annotations

from apr_ds.errors import UserError
from apr_ds.tasks import sudoku, sudoku_lines, sudoku_spawn, sudoku_verify
from apr_ds.tasks.sudoku_solvers import SOLVERS
from apr_ds.tasks.sudoku_trace import (LINE_KIND_NAMES, SAMPLE_TRACE, TRACE_PHRASES, apr_prompt, child_prompt, line_kind,
                                       sosp_prompt)
from apr_ds.tasks.task import Task


class SudokuTask(Task):
    name = "sudoku"
    trace_phrases = TRACE_PHRASES
    sample_trace = SAMPLE_TRACE
    line_kind_names = LINE_KIND_NAMES

    def make_splits(self, workers, progress=None):
        return sudoku.make_splits(self.task_cfg, workers=workers, progress=progress)

    def problem_from_json(self, obj):
        try:
            return sudoku.Puzzle.from_json(obj)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a Sudoku puzzle (need size and grid): {obj!r:.200} ({e})") from None

    def prompt(self, problem, method, sub_call_budget=None, token_budget=None):
        if method == "apr":
            return apr_prompt(problem.givens, problem.size, sub_call_budget, token_budget)
        if method in ("sosp", "bon"):
            return sosp_prompt(problem.givens, problem.size, token_budget)
        raise UserError(f"unknown method {method!r}; methods: apr, sosp, bon")

    def solve(self, problem, method, rng):
        return SOLVERS[method](problem, self.solver_cfg, rng)

    def verify(self, problem, output):
        return sudoku_verify.verify(problem, output)

    def claimed_answer(self, output):
        return sudoku_verify.claimed_answer(output)

    def parse_spawn(self, text, check_numbers=True):
        return sudoku_spawn.parse_spawn(text, check_numbers)

    def child_prompt(self, child, token_budget=None):
        return child_prompt(child.cells, child.size, token_budget)

    def child_result(self, output):
        return sudoku_spawn.child_result(output)

    def join_text(self, spawn, results):
        return sudoku_spawn.join_text(spawn, results)

    def line_diagnostics(self, texts):
        return sudoku_lines.line_diagnostics(texts)

    def wrong_spans(self, text):
        return sudoku_lines.wrong_spans(text)

    def line_kind(self, line):
        return line_kind(line)

    def failed_checks(self, text):
        return sudoku_lines.failed_checks(text)
