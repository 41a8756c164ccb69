"""The Task interface: what the data pipeline, the runtime, RL and evaluation need from a task.

Countdown implements it; a second task (e.g. Sudoku) adds a module and one line in `TASKS`, and
nothing downstream changes. The spawn/join markers are task-independent (`apr_ds.lang`); what a
task contributes is its problems, its prompts, its solvers and its strict verifier.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Protocol

from apr_ds.errors import UserError


class Task(Protocol):
    name: str

    def make_splits(self, workers: int, progress: Callable[[int], Any] | None = None) -> dict[str, list]:
        """Disjoint, de-duplicated problem splits: train, val, test, test_unseen_targets."""

    def problem_from_json(self, obj: dict) -> Any: ...

    def prompt(self, problem, method: str, sub_call_budget: int | None = None, token_budget: int | None = None) -> str:
        """The root prompt of `method` ("sosp" or "apr"), without `<s>`."""

    def solve(self, problem, method: str, rng: random.Random):
        """A symbolic solver run (`apr_ds.tasks.solvers.SolverRun`) that writes the method's trace."""

    def verify(self, problem, output):
        """The one strict verifier: `Verdict(ok, reason, answer)`. Never raises."""


class CountdownTask:
    name = "countdown"

    def __init__(self, task_cfg, solver_cfg):
        self.task_cfg, self.solver_cfg = task_cfg, solver_cfg

    def make_splits(self, workers, progress=None):
        from apr_ds.tasks.countdown import make_splits
        return make_splits(self.task_cfg, workers=workers, progress=progress)

    def problem_from_json(self, obj):
        from apr_ds.tasks.countdown import Problem
        try:
            return Problem.from_json(obj)
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"not a Countdown problem (need nums and target): {obj!r:.200} ({e})") from None

    def prompt(self, problem, method, sub_call_budget=None, token_budget=None):
        from apr_ds.lang import render
        if method == "apr":
            return render.apr_prompt(problem.target, problem.nums, sub_call_budget, token_budget)
        if method in ("sosp", "bon"):
            return render.sosp_prompt(problem.target, problem.nums, token_budget)
        raise UserError(f"unknown method {method!r}; methods: apr, sosp, bon")

    def solve(self, problem, method, rng):
        from apr_ds.tasks.solvers import SOLVERS
        return SOLVERS[method](problem, self.solver_cfg, rng)

    def verify(self, problem, output):
        from apr_ds.tasks.countdown import verify
        return verify(problem, output)


TASKS = {"countdown": CountdownTask}


def get_task(cfg) -> Task:
    """The task a config names. `cfg` is the whole `Config`."""
    if cfg.task.name not in TASKS:
        raise UserError(f"task.name {cfg.task.name!r} is not implemented; available: {', '.join(TASKS)}")
    return TASKS[cfg.task.name](cfg.task, cfg.solver)
