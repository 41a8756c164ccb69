"""Parsing the trace language: spawn blocks, child results, join continuations and solution paths.

Nothing here raises on model output. A spawn block that cannot be executed becomes a `SpawnError`
whose `kind` says why (truncated, duplicated markers, unknown node, wrong numbers, ...).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from apr_ds.lang import render
from apr_ds.lang.render import CALL_CLOSE, CALL_OPEN, GOAL_REACHED

_INT_LIST = r"\[((?:\d+(?:, \d+)*)?)\]"
_OP = r"(\d+)([+\-*/])(\d+)=(\d+)"
STATE_RE = re.compile(r"^Current State: (\d+):" + _INT_LIST + r", Operations: \[((?:'[^']*'(?:, '[^']*')*)?)\]$")
EXPLORE_RE = re.compile(r"^Exploring Operation: " + _OP + r", Resulting Numbers: " + _INT_LIST + r"$")
GENERATED_RE = re.compile(r"^Generated Node #(\d+(?:,\d+)*): (\d+):" + _INT_LIST + r" Operation: " + _OP + r"$")
MOVE_RE = re.compile(r"^Moving to Node #(\d+(?:,\d+)*)$")
GOAL_RE = re.compile(r"^(\d+),(\d+) equal: Goal Reached$")
START_RE = re.compile(r"^<Start Sub Search (\d+) at level (\d+)> Moving to Node #(\d+(?:,\d+)*)$")

SPAWN_ERROR_KINDS = ("not_a_spawn", "truncated", "duplicated_marker", "bad_line", "empty", "bad_numbering",
                     "unknown_node", "wrong_numbers", "duplicate_child")


@dataclass(frozen=True)
class SpawnError:
    """Why a spawn block cannot be executed. A value, not an exception: runtimes branch on it."""

    kind: str
    message: str

    def __bool__(self) -> bool:  # so `if spawn:` reads naturally
        return False


@dataclass(frozen=True)
class ChildCall:
    index: int
    node_id: str
    target: int
    nums: tuple[int, ...]
    ops: tuple[str, ...]

    def prompt(self, token_budget: int | None = None) -> str:
        return render.child_prompt(self.node_id, self.target, self.nums, self.ops, token_budget)


@dataclass(frozen=True)
class Spawn:
    level: int
    children: tuple[ChildCall, ...]
    prefix: str = field(repr=False)
    """The parent's text before the spawn block; the join continuation starts from it."""


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(", ")) if text else ()


def _ops(text: str) -> tuple[str, ...]:
    return tuple(x.strip("'") for x in text.split(", ")) if text else ()


def apply_op(nums: tuple[int, ...], a: int, sign: str, b: int, result: int) -> tuple[tuple[int, ...] | None, str]:
    """Replay one operation on a multiset. Returns (new numbers, '') or (None, reason)."""
    pool = list(nums)
    for operand in (a, b):
        if operand not in pool:
            return None, f"{operand} not available in {render.nums_text(nums)}"
        pool.remove(operand)
    if sign == "+":
        ok = a + b == result
    elif sign == "*":
        ok = a * b == result
    elif sign == "-":
        if a < b:
            return None, f"subtraction {a}-{b} must be written larger first"
        ok = a - b == result
    else:
        if b == 0 or a % b:
            return None, f"division {a}/{b} is not exact"
        ok = a // b == result
    if not ok:
        return None, f"arithmetic {a}{sign}{b}={result} is wrong"
    return tuple(pool) + (result,), ""


def _node_table(lines: list[str], unknown_parent: set | None = None
                ) -> dict[str, tuple[int, tuple[int, ...], tuple[str, ...], str]]:
    """node id -> (target, nums, ops, problem) from `Moving to Node` + `Current State` pairs and `Generated Node`
    lines. `problem` is '' for a consistent node, or why its numbers do not follow from its parent. Nodes whose
    parent never appears are added to `unknown_parent`."""
    nodes: dict = {}
    unknown_parent = set() if unknown_parent is None else unknown_parent
    for i, line in enumerate(lines):
        move = MOVE_RE.match(line)
        if move and i + 1 < len(lines):
            state = STATE_RE.match(lines[i + 1])
            if state:
                nodes.setdefault(move.group(1), (int(state.group(1)), _ints(state.group(2)), _ops(state.group(3)), ""))
    for line in lines:
        gen = GENERATED_RE.match(line)
        if not gen or gen.group(1) in nodes:
            continue
        node_id, target, nums = gen.group(1), int(gen.group(2)), _ints(gen.group(3))
        op = f"{gen.group(4)}{gen.group(5)}{gen.group(6)}={gen.group(7)}"
        parent_id = node_id.rsplit(",", 1)[0] if "," in node_id else None
        parent = nodes.get(parent_id) if parent_id else None
        if parent is None:
            nodes[node_id] = (target, nums, (op,), f"its parent node #{parent_id} never appears")
            unknown_parent.add(node_id)
            continue
        expected, why = apply_op(parent[1], int(gen.group(4)), gen.group(5), int(gen.group(6)), int(gen.group(7)))
        if expected is not None and sorted(expected) != sorted(nums):
            why = f"{op} on {render.nums_text(parent[1])} gives {render.nums_text(sorted(expected))}, not {render.nums_text(nums)}"
        if target != parent[0]:
            why = f"target {target} differs from its parent's {parent[0]}"
        nodes[node_id] = (target, nums, parent[2] + (op,), why)
    return nodes


def ends_with_spawn(text: str) -> bool:
    """The runtime's trigger, as in the reference: the last non-empty line holds the closing marker."""
    stripped = text.rstrip("\n")
    return CALL_CLOSE in stripped[stripped.rfind("\n") + 1:]


def parse_spawn(text: str, check_numbers: bool = True) -> Spawn | SpawnError:
    """Parse the spawn block that ends a parent's output (trailing newlines allowed).

    check_numbers=True refuses a spawned node whose numbers do not follow from its parent (`wrong_numbers`).
    False is the reference runtime (`get_subsearch_info`): the child starts from the state its Generated Node
    line claims, and a wrong step is caught where it matters, by the strict verifier replaying the solution
    path from the prompt's numbers. Structural faults (unknown nodes, bad lines, ...) fail either way."""
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
    entries = block.split("\n")[:-1] if block else []
    # A parent's earlier spawn blocks are replaced by join blocks, so no marker may stand before this one.
    if any(CALL_OPEN in e or CALL_CLOSE in e for e in entries) or CALL_OPEN in prefix or CALL_CLOSE in prefix:
        return SpawnError("duplicated_marker", "a spawn marker appears inside the spawn block")
    if not entries:
        return SpawnError("empty", "the spawn block names no sub searches")
    unknown_parent: set = set()
    nodes = _node_table(prefix.split("\n"), unknown_parent)
    children, levels = [], set()
    for i, entry in enumerate(entries):
        start = START_RE.match(entry)
        if not start:
            return SpawnError("bad_line", f"line {i + 1} of the spawn block is not a sub search: {entry[:80]!r}")
        index, level, node_id = int(start.group(1)), int(start.group(2)), start.group(3)
        if index != i:
            return SpawnError("bad_numbering", f"sub search {index} is listed in position {i}")
        levels.add(level)
        if node_id not in nodes:
            return SpawnError("unknown_node", f"sub search {i} names node #{node_id}, which the thread never generated")
        if any(c.node_id == node_id for c in children):
            return SpawnError("duplicate_child", f"node #{node_id} is spawned twice")
        target, nums, ops, problem = nodes[node_id]
        if problem and (check_numbers or node_id in unknown_parent):
            return SpawnError("wrong_numbers", f"node #{node_id}: {problem}")
        children.append(ChildCall(i, node_id, target, nums, ops))
    if len(levels) != 1:
        return SpawnError("bad_numbering", f"one spawn block mixes levels {sorted(levels)}")
    return Spawn(levels.pop(), tuple(children), prefix)


def child_result(output: str) -> str | None:
    """A child's message to its parent: its summary path (text after the second-to-last `Goal Reached`), or None."""
    last = output.rfind(GOAL_REACHED)
    second = output.rfind(GOAL_REACHED, 0, last) if last >= 0 else -1
    if second < 0:
        return None
    path = output[second + len(GOAL_REACHED):].strip()
    return path or None


def join_text(spawn: Spawn, results: list[str | None]) -> str:
    """The parent's next prompt: its text with the spawn block replaced by the children's results."""
    pairs = [(child.node_id, result) for child, result in zip(spawn.children, results, strict=True)]
    return spawn.prefix + render.join_block(spawn.level, pairs)


def replay_path(problem, path: str | None):
    """Strictly check a solution path against `problem` (see `apr_ds.tasks.countdown.verify`)."""
    from apr_ds.tasks.countdown import Verdict
    if path is None:
        return Verdict(False, "no solution path: fewer than two 'Goal Reached'")
    nums, ops, target = tuple(problem.nums), [], problem.target
    steps = 0
    for line in path.split("\n"):
        line = line.strip()
        if not line or MOVE_RE.match(line):
            continue
        if (m := STATE_RE.match(line)):
            if int(m.group(1)) != target or sorted(_ints(m.group(2))) != sorted(nums) or list(_ops(m.group(3))) != ops:
                return Verdict(False, f"state line disagrees with the replay: {line[:120]!r}")
        elif (m := GENERATED_RE.match(line)):
            op = f"{m.group(4)}{m.group(5)}{m.group(6)}={m.group(7)}"
            if int(m.group(2)) != target or sorted(_ints(m.group(3))) != sorted(nums) or not ops or op != ops[-1]:
                return Verdict(False, f"generated-node line disagrees with the replay: {line[:120]!r}")
        elif (m := EXPLORE_RE.match(line)):
            a, sign, b, result = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
            steps += 1
            new, why = apply_op(nums, a, sign, b, result)
            if new is None:
                return Verdict(False, f"step {steps}: {why}")
            if sorted(new) != sorted(_ints(m.group(5))):
                return Verdict(False, f"step {steps}: resulting numbers [{m.group(5)}] should be {render.nums_text(sorted(new))}")
            nums = new
            ops.append(f"{a}{sign}{b}={result}")
        elif (m := GOAL_RE.match(line)):
            if int(m.group(2)) != target:
                return Verdict(False, f"goal line names target {m.group(2)}, the problem's is {target}")
            if nums != (target,) or int(m.group(1)) != target:
                return Verdict(False, f"goal claimed with numbers {render.nums_text(nums)}, need [{target}]")
            return Verdict(True, "ok", tuple(ops))
        else:
            return Verdict(False, f"unexpected line in the solution path: {line[:120]!r}")
    return Verdict(False, "the solution path ends without a goal line")
