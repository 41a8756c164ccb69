"""The Task interface: what the data pipeline, the runtime, RL and evaluation need from a task.

A task owns its problems, its trace language (prompts, the lines its solvers write, what a spawn block's lines
and a join block's entries say), its solvers, its strict verifier and its per-line checks. Only the spawn/join
markers and the conditioning prefixes are shared by every task (`apr_ds.lang`). Countdown implements it
(`countdown_task.py`); a second task adds a module and one line in `apr_ds.tasks.TASKS`, and nothing
downstream changes.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Iterable

from apr_ds.errors import UserError
from apr_ds.lang import CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, JOIN_OPEN, SpawnError


@dataclass(frozen=True)
class Verdict:
    ok: bool
    reason: str
    """'ok', or what failed first, e.g. "step 2: 7 not available in [3, 5]"."""
    answer: tuple[str, ...] = ()
    """The steps of the verified path (empty when not ok). Used for majority votes."""


@dataclass
class SolverRun:
    """One thread of a solver run. `main_calls[i]` is the whole text of the i-th generation call of this
    thread (prompt included); `sub_calls[k]` holds the child runs of its k-th spawn."""

    prompt: str
    main_calls: list[str]
    sub_calls: list[list["SolverRun"]] = field(default_factory=list)
    goal: Any = field(default=None, repr=False)
    """Where the solver reached the goal; None when it did not."""

    @property
    def solved(self) -> bool:
        return self.goal is not None

    def threads(self) -> list["SolverRun"]:
        """This run and every descendant, parents before children."""
        out = [self]
        for spawn in self.sub_calls:
            for child in spawn:
                out += child.threads()
        return out

    @property
    def num_children(self) -> int:
        return sum(len(spawn) for spawn in self.sub_calls)


def verify_text(output, check: Callable[[str], Verdict]) -> Verdict:
    """`check` run on a main thread's output as text: bytes are decoded, other types refused, and an exception
    becomes a failed verdict (a verifier that raises would crash RL). Every task's `verify` goes through it."""
    try:
        if isinstance(output, (bytes, bytearray)):
            output = bytes(output).decode("utf-8", errors="replace")
        if not isinstance(output, str):
            return Verdict(False, f"output is {type(output).__name__}, not text")
        return check(output)
    except Exception as e:
        return Verdict(False, f"verifier error: {type(e).__name__}: {e}")


def count_checks(verdicts: Iterable[dict]) -> Counter:
    """Counts `{check}` (right) and `{check}_total` over the verdicts of checked lines."""
    counts: Counter = Counter()
    for checks in verdicts:
        counts.update({f"{check}_total": 1 for check in checks})
        counts.update(checks)
    return counts


def fraction_right(counts: Counter, checks: Iterable[str]) -> dict:
    """Per check, the share of the lines it read that got it right (nan where it read none), and how many lines:
    what `Task.line_diagnostics` returns, from `count_checks`' counts."""
    return {check: {"right": counts[check] / counts[f"{check}_total"] if counts[f"{check}_total"] else float("nan"),
                    "lines": counts[f"{check}_total"]} for check in checks}


def failures_by_line(text: str, verdicts: Iterable[tuple[int, dict]]) -> dict[int, list[str]]:
    """`verdicts`: (offset in `text` of a checked line, {check: right}) pairs -> the checks each line of
    `text.splitlines()` fails, by line number: what `Task.failed_checks` returns, for any task's checker."""
    number_at, offset = {}, 0
    for number, line in enumerate(text.splitlines(keepends=True)):
        number_at[offset] = number
        offset += len(line)
    failed = {}
    for start, checks in verdicts:
        wrong = [check for check, right in checks.items() if not right]
        if wrong:
            failed[number_at[start]] = wrong
    return failed


def problem_rng(seed: int, method: str, index) -> random.Random:
    """The random source of one solver run: a pure function of its problem's place, whatever the worker."""
    return random.Random(f"apr-ds:solve:{seed}:{method}:{index}")


class Task(ABC):
    name: ClassVar[str]
    trace_phrases: ClassVar[tuple[str, ...]]
    """The phrases of the task's traces that the domain tokenizer makes single tokens (`apr_ds.data.tokenizer`).
    Their order is the tokens' id order: append, never reorder. None holds a newline (a newline is its own token,
    so a prompt's tokens stay a prefix of its continuation's)."""
    sample_trace: ClassVar[str]
    """A few well-formed checked lines: text to check that a tokenizer's tokens decode one by one to it."""

    def __init__(self, task_cfg, solver_cfg):
        """`task_cfg` is a TaskConfig, `solver_cfg` a SolverConfig."""
        self.task_cfg, self.solver_cfg = task_cfg, solver_cfg

    # ------------------------------------------------------------------------ problems

    @abstractmethod
    def make_splits(self, workers: int, progress: Callable[[int], Any] | None = None) -> dict[str, list]:
        """Disjoint, de-duplicated problem splits: train, val, test, test_unseen_targets."""

    @abstractmethod
    def problem_from_json(self, obj: dict) -> Any:
        """A problem from one line of a problems file; `UserError` when `obj` is not one."""

    def load_problems(self, run_dir: str, split: str, count: int = 0, problems_file: str = "") -> list:
        """The problems `apr-ds data` wrote for `split` ({run_dir}/data/problems/{split}.jsonl), or those of
        `problems_file` when it is given: the first `count`, or all of them when `count` is 0."""
        path = Path(problems_file or Path(run_dir) / "data" / "problems" / f"{split}.jsonl")
        if not path.is_file():
            raise UserError(f"no problems file {str(path)!r}; run `apr-ds data` for this run_dir or set eval.problems_file")
        problems = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                problems.append(self.problem_from_json(json.loads(line)))
            except (json.JSONDecodeError, UserError) as e:
                raise UserError(f"{path}:{number}: {e}") from None
        if not problems:
            raise UserError(f"{path} holds no problems")
        return problems[:count] if count > 0 else problems

    # ------------------------------------------------------------------------ traces

    @abstractmethod
    def prompt(self, problem, method: str, sub_call_budget: int | None = None, token_budget: int | None = None) -> str:
        """The root prompt of `method` ("apr", "sosp" or "bon"), without `<s>`."""

    @abstractmethod
    def solve(self, problem, method: str, rng: random.Random) -> SolverRun:
        """A symbolic solver run that writes the method's trace."""

    @abstractmethod
    def verify(self, problem, output) -> Verdict:
        """The one strict verifier of a main thread's output. Never raises."""

    @abstractmethod
    def claimed_answer(self, output: str) -> tuple[str, ...] | None:
        """The steps of the solution a main thread's output claims (unverified), or None: what majority votes count."""

    # ------------------------------------------------------------------------ spawn and join (the runtime)

    @abstractmethod
    def parse_spawn(self, text: str, check_numbers: bool = True) -> Any | SpawnError:
        """The spawn that ends a parent's output: an object whose `children` are its child calls, in order, or
        why it cannot run. `check_numbers` also refuses a child whose state does not follow from its parent's.
        Never raises."""

    @abstractmethod
    def child_prompt(self, child, token_budget: int | None = None) -> str:
        """The prompt of one child call of a parsed spawn, without `<s>`."""

    @abstractmethod
    def child_result(self, output: str) -> str | None:
        """What a finished child reports to its parent, or None when it found nothing."""

    @abstractmethod
    def join_text(self, spawn, results: list[str | None]) -> str:
        """The parent's next prompt: its text with the spawn block replaced by the children's `results`."""

    # ------------------------------------------------------------------------ per-line checks

    @abstractmethod
    def line_diagnostics(self, texts: Iterable[str]) -> dict:
        """Per skill, the fraction of the checked lines of all `texts` that got it right, and how many lines."""

    @abstractmethod
    def wrong_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans [start, end) of `text` that its checked lines got wrong."""

    # ------------------------------------------------------------------------ reading a trace (the trace viewer)

    line_kind_names: ClassVar[tuple[str, ...]]
    """Every kind `line_kind` returns, in the order a legend lists them."""

    @abstractmethod
    def line_kind(self, line: str) -> str:
        """What one line of a thread's text is (one of `line_kind_names`), for a line outside spawn and join blocks."""

    @abstractmethod
    def failed_checks(self, text: str) -> dict[int, list[str]]:
        """The per-line checks each line of `text.splitlines()` fails, by line number (from 0); lines that pass
        every check, or that no check reads, are absent. The same checks as `line_diagnostics`."""

    def line_kinds(self, text: str) -> list[str]:
        """One kind per line of `text.splitlines()`: `spawn` or `join` for a block's lines, markers included (the
        blocks are every task's), else the task's `line_kind`."""
        kinds, block = [], None
        for line in text.splitlines():
            if block is None and line.startswith((CALL_OPEN, JOIN_OPEN)):
                block = "spawn" if line.startswith(CALL_OPEN) else "join"
            if block is not None:
                kinds.append(block)
                if line.startswith(CALL_CLOSE if block == "spawn" else JOIN_CLOSE):
                    block = None
            else:
                kinds.append(self.line_kind(line))
        return kinds
