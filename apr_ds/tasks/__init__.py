"""Tasks: problems, prompts, trace languages, symbolic solvers and strict verifiers, behind the `Task` interface.

`TASKS` lists every task by the name `task.name` selects it with; a new task is a module that implements
`Task` and one line here.
"""

from apr_ds.errors import UserError
from apr_ds.tasks.countdown_task import CountdownTask
from apr_ds.tasks.sudoku_task import SudokuTask
from apr_ds.tasks.task import Task

TASKS: dict[str, type[Task]] = {"countdown": CountdownTask, "sudoku": SudokuTask}


def get_task(cfg) -> Task:
    """The task a config names. `cfg` is the whole `Config`."""
    if cfg.task.name not in TASKS:
        raise UserError(f"task.name {cfg.task.name!r} is not implemented; available: {', '.join(TASKS)}")
    return TASKS[cfg.task.name](cfg.task, cfg.solver)


__all__ = ["TASKS", "Task", "get_task"]
