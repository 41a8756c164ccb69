"""Reading the task-independent structure of a spawn block: where it starts and ends, and its lines.

Nothing here raises on model output. A block that cannot be executed becomes a `SpawnError` whose `kind`
says why; this module finds the structural faults (not_a_spawn, truncated, bad_line, duplicated_marker,
empty), the task's parser the faults of the lines themselves (`apr_ds.tasks`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import Iterator

from apr_ds.lang.render import CALL_CLOSE, CALL_OPEN, JOIN_CLOSE, JOIN_OPEN


@dataclass(frozen=True)
class SpawnError:
    """Why a spawn block cannot be executed. A value, not an exception: runtimes branch on it."""

    kind: str
    message: str

    def __bool__(self) -> bool:  # so `if spawn:` reads naturally
        return False


@dataclass(frozen=True)
class SpawnBlock:
    """A spawn block cut out of a parent's output, its lines not yet read."""

    prefix: str = field(repr=False)
    """The parent's text before the block; the join continuation starts from it."""
    lines: tuple[str, ...]
    """The lines between the markers, without their newlines."""


def ends_with_spawn(text: str) -> bool:
    """The runtime's trigger, as in the reference: the last non-empty line holds the closing marker."""
    stripped = text.rstrip("\n")
    return CALL_CLOSE in stripped[stripped.rfind("\n") + 1:]


def split_spawn(text: str) -> SpawnBlock | SpawnError:
    """The spawn block that ends a parent's output (trailing newlines allowed), split from the text before it."""
    body = text.rstrip("\n")
    if not ends_with_spawn(body):
        if CALL_OPEN in body:
            return SpawnError("truncated", f"{CALL_OPEN} is never closed by {CALL_CLOSE}")
        return SpawnError("not_a_spawn", f"the output does not end with {CALL_CLOSE}")
    if not body.endswith("\n" + CALL_CLOSE) and body != CALL_CLOSE:
        return SpawnError("bad_line", f"{CALL_CLOSE} must stand alone on the last line")
    open_at = body.rfind(CALL_OPEN + "\n")
    if open_at < 0:
        return SpawnError("truncated", f"{CALL_CLOSE} without an opening {CALL_OPEN}")
    prefix, block = body[:open_at], body[open_at + len(CALL_OPEN) + 1:-len(CALL_CLOSE)]
    if open_at and not prefix.endswith("\n"):
        return SpawnError("bad_line", f"{CALL_OPEN} must start a line")
    lines = block.split("\n")[:-1] if block else []
    # A parent's earlier spawn blocks are replaced by join blocks, so no marker may stand before this one.
    if any(CALL_OPEN in line or CALL_CLOSE in line for line in lines) or CALL_OPEN in prefix or CALL_CLOSE in prefix:
        return SpawnError("duplicated_marker", "a spawn marker appears inside the spawn block")
    if not lines:
        return SpawnError("empty", "the spawn block names no sub searches")
    return SpawnBlock(prefix, tuple(lines))


def lines_outside_joins(text: str) -> Iterator[tuple[int, str, bool]]:
    """(offset in `text`, the line without its line end, whether it is complete) for every line of
    `text.splitlines()` outside join blocks, which copy children's lines into their parent: what a task's per-line
    checks read. A line is complete when it ends in a newline (a context can cut the last)."""
    in_join, offset = False, 0
    for raw in text.splitlines(keepends=True):
        start, offset, line = offset, offset + len(raw), raw.rstrip("\r\n")
        if line.startswith(JOIN_OPEN):
            in_join = True
        if in_join:
            in_join = not line.startswith(JOIN_CLOSE)
            continue
        yield start, line, raw.endswith("\n")
