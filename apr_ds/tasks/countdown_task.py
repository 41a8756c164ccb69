"""Countdown behind the Task interface.

    countdown.py           problems, the arithmetic rules, exhaustive solving, the splits
    countdown_trace.py     the trace lines and prompts: writing them, and the patterns that read them
    countdown_solvers.py   the symbolic SoS+ and APR solvers that write the training traces
    countdown_spawn.py     what the runtime does with a spawn block: children, their prompts, the join
    countdown_verify.py    the strict verifier
    countdown_lines.py     the per-line checks (eval's diagnostics, RL's line penalty)
"""

from __future__ import annotations

from apr_ds.errors import UserError
from apr_ds.tasks import countdown, countdown_lines, countdown_spawn, countdown_verify
from apr_ds.tasks.countdown_solvers import SOLVERS
from apr_ds.tasks.countdown_trace import (LINE_KIND_NAMES, SAMPLE_TRACE, TRACE_PHRASES, apr_prompt, child_prompt, line_kind,
                                          sosp_prompt)
from apr_ds.tasks.task import Task


class CountdownTask(Task):
    name = "countdown"
    trace_phrases = TRACE_PHRASES
    sample_trace = SAMPLE_TRACE
    line_kind_names = LINE_KIND_NAMES

    def make_splits(self, workers, progress=None):
        return countdown.make_splits(self.task_cfg, workers=workers, progress=progress)

    def problem_from_json(self, obj):
        try:
            return countdown.Problem.from_json(obj)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a Countdown problem (need nums and target): {obj!r:.200} ({e})") from None

    def prompt(self, problem, method, sub_call_budget=None, token_budget=None):
        if method == "apr":
            return apr_prompt(problem.target, problem.nums, sub_call_budget, token_budget)
        if method in ("sosp", "bon"):
            return sosp_prompt(problem.target, problem.nums, token_budget)
        raise UserError(f"unknown method {method!r}; methods: apr, sosp, bon")

    def solve(self, problem, method, rng):
        return SOLVERS[method](problem, self.solver_cfg, rng)

    def verify(self, problem, output):
        return countdown_verify.verify(problem, output)

    def claimed_answer(self, output):
        return countdown_verify.claimed_answer(output)

    def parse_spawn(self, text, check_numbers=True):
        return countdown_spawn.parse_spawn(text, check_numbers)

    def child_prompt(self, child, token_budget=None):
        return child_prompt(child.node_id, child.target, child.nums, child.ops, token_budget)

    def child_result(self, output):
        return countdown_spawn.child_result(output)

    def join_text(self, spawn, results):
        return countdown_spawn.join_text(spawn, results)

    def line_diagnostics(self, texts):
        return countdown_lines.line_diagnostics(texts)

    def wrong_spans(self, text):
        return countdown_lines.wrong_spans(text)

    def line_kind(self, line):
        return line_kind(line)

    def failed_checks(self, text):
        return countdown_lines.failed_checks(text)
