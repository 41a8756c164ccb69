"""Running a Countdown spawn: the children a spawn block names, their prompts, their results and the join.

A spawn block names nodes the parent generated (`<Start Sub Search i at level L> Moving to Node #id`); each
child starts from its node's state, read off the parent's own lines (its node table). Nothing here raises
on model output: a block that cannot run is a `SpawnError` whose `kind` says why (the structural kinds of
`apr_ds.lang`, and bad_line, bad_numbering, unknown_node, wrong_numbers, duplicate_child).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from apr_ds.lang import SpawnError, split_spawn
from apr_ds.tasks.countdown import apply_op
from apr_ds.tasks.countdown_trace import (GENERATED_RE, GOAL_REACHED, MOVE_RE, START_RE, STATE_RE, countdown_join_block,
                                          nums_text, operation_text, parse_ints, parse_ops)


@dataclass(frozen=True)
class ChildCall:
    """One child of a spawn: the node it starts from (`CountdownTask.child_prompt` writes its prompt)."""

    index: int
    node_id: str
    target: int
    nums: tuple[int, ...]
    ops: tuple[str, ...]


@dataclass(frozen=True)
class Spawn:
    level: int
    children: tuple[ChildCall, ...]
    prefix: str = field(repr=False)
    """The parent's text before the spawn block; the join continuation starts from it."""


@dataclass(frozen=True)
class _Node:
    target: int
    nums: tuple[int, ...]
    ops: tuple[str, ...]
    problem: str = ""
    """Why its numbers do not follow from its parent's; '' for a consistent node."""
    orphan: bool = False
    """Its parent never appears in the thread."""


def _node_table(lines: list[str]) -> dict[str, _Node]:
    """Every node a thread wrote: from `Moving to Node` + `Current State` pairs, then from `Generated Node` lines."""
    nodes: dict[str, _Node] = {}
    for i, line in enumerate(lines):
        move = MOVE_RE.match(line)
        if move and i + 1 < len(lines):
            state = STATE_RE.match(lines[i + 1])
            if state:
                nodes.setdefault(move.group(1), _Node(int(state.group(1)), parse_ints(state.group(2)),
                                                      parse_ops(state.group(3))))
    for line in lines:
        gen = GENERATED_RE.match(line)
        if gen and gen.group(1) not in nodes:
            nodes[gen.group(1)] = _generated_node(gen, nodes)
    return nodes


def _generated_node(gen, nodes: dict[str, _Node]) -> _Node:
    """The node a `Generated Node` line claims, checked against its parent's state."""
    node_id, target, nums, op = gen.group(1), int(gen.group(2)), parse_ints(gen.group(3)), operation_text(gen, 4)
    parent_id = node_id.rsplit(",", 1)[0] if "," in node_id else None
    parent = nodes.get(parent_id) if parent_id else None
    if parent is None:
        return _Node(target, nums, (op,), f"its parent node #{parent_id} never appears", orphan=True)
    expected, why = apply_op(parent.nums, int(gen.group(4)), gen.group(5), int(gen.group(6)), int(gen.group(7)))
    if expected is not None and sorted(expected) != sorted(nums):
        why = f"{op} on {nums_text(parent.nums)} gives {nums_text(sorted(expected))}, not {nums_text(nums)}"
    if target != parent.target:
        why = f"target {target} differs from its parent's {parent.target}"
    return _Node(target, nums, parent.ops + (op,), why)


def parse_spawn(text: str, check_numbers: bool = True) -> Spawn | SpawnError:
    """Parse the spawn block that ends a parent's output (trailing newlines allowed).

    check_numbers=True refuses a spawned node whose numbers do not follow from its parent (`wrong_numbers`).
    False is the reference runtime (`get_subsearch_info`): the child starts from the state its Generated Node
    line claims, and a wrong step is caught where it matters, by the strict verifier replaying the solution
    path from the prompt's numbers. Structural faults (unknown nodes, bad lines, ...) fail either way."""
    block = split_spawn(text)
    if isinstance(block, SpawnError):
        return block
    nodes = _node_table(block.prefix.split("\n"))
    children, levels = [], set()
    for i, line in enumerate(block.lines):
        start = START_RE.match(line)
        if not start:
            return SpawnError("bad_line", f"line {i + 1} of the spawn block is not a sub search: {line[:80]!r}")
        index, level, node_id = int(start.group(1)), int(start.group(2)), start.group(3)
        if index != i:
            return SpawnError("bad_numbering", f"sub search {index} is listed in position {i}")
        levels.add(level)
        if node_id not in nodes:
            return SpawnError("unknown_node", f"sub search {i} names node #{node_id}, which the thread never generated")
        if any(c.node_id == node_id for c in children):
            return SpawnError("duplicate_child", f"node #{node_id} is spawned twice")
        node = nodes[node_id]
        if node.problem and (check_numbers or node.orphan):
            return SpawnError("wrong_numbers", f"node #{node_id}: {node.problem}")
        children.append(ChildCall(i, node_id, node.target, node.nums, node.ops))
    if len(levels) != 1:
        return SpawnError("bad_numbering", f"one spawn block mixes levels {sorted(levels)}")
    return Spawn(levels.pop(), tuple(children), block.prefix)


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
    return spawn.prefix + countdown_join_block(spawn.level, pairs)
