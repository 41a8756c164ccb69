"""Tasks: problems, prompts, symbolic solvers and the strict verifier, behind the `Task` interface."""

from apr_ds.tasks.task import Task, get_task

__all__ = ["Task", "get_task"]
