"""Symbolic Countdown solvers that write SoS+ and APR traces (apr-reference §2.2-2.5).

Both share one skeleton, a best-first beam search: pop up to `beam` nodes from a heap keyed by the
heuristic; for each, print its state, keep the `beam` best successors, shuffle them (this sets their
printed order and ids), print them, then either push them onto the heap or double down:
- SoS+ doubles down with an inline recursive sub search (sequential text, not a spawn);
- APR spawns one child thread per kept non-terminal successor, joins their summary paths and goes on.

Each solver run is a `SolverRun`: the text of every main call, and per spawn the children's own runs.
Differences from the reference code, on purpose: the heap breaks heuristic ties by insertion order (the
reference leaves them to heapq), and the `Moving to Node` line after a spawn names the next node of the
beam (the reference reuses a loop variable there and sometimes skips that line).
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from apr_ds.tasks import countdown_trace as trace
from apr_ds.tasks.countdown import Problem, successors
from apr_ds.tasks.task import SolverRun


def mult_heuristic(nums, target: int) -> int:
    """Sum over numbers of the distance to the nearest factor f of the target, 2 <= f <= target (reference code)."""
    factors = [f for f in range(2, target + 1) if target % f == 0] or [target]
    return sum(min(abs(n - f) for f in factors) for n in nums)


def sum_heuristic(nums, target: int) -> float:
    """Mean distance of the numbers to the target."""
    if len(nums) == 1:
        return abs(nums[0] - target)
    return sum(abs(n - target) for n in nums) / len(nums)


HEURISTICS = {"mult": mult_heuristic, "sum": sum_heuristic}


@dataclass
class Node:
    node_id: str
    nums: list[int]
    ops: list[str]
    score: float
    parent: "Node | None" = field(default=None, repr=False)


def summary_path(goal: Node, start: Node, target: int) -> str:
    """The solution path from `start` to `goal`, as written after `Goal Reached` (reference `get_path_to_target`)."""
    chain = [goal]
    while chain[-1] is not start:
        chain.append(chain[-1].parent)
    chain.reverse()
    text = trace.move_line(start.node_id)
    for node, nxt in zip(chain, chain[1:]):
        text += trace.state_line(target, node.nums, node.ops)
        text += trace.explore_line(nxt.ops[-1], nxt.nums)
        if len(nxt.nums) == 1:
            return text + trace.goal_line(nxt.nums[0], target)
        text += trace.generated_line(nxt.node_id, target, nxt.nums, nxt.ops[-1])
        text += trace.move_line(nxt.node_id)
    raise AssertionError("a summary path must end at a single number")


class BeamSearch:
    """Shared skeleton. Subclasses decide what doubling down means."""

    def __init__(self, target: int, heuristic, rng: random.Random):
        self.target, self.heuristic, self.rng = target, heuristic, rng
        self._tiebreak = 0

    def _push(self, heap: list, node: Node) -> None:
        self._tiebreak += 1
        heapq.heappush(heap, (node.score, self._tiebreak, node))

    def expand(self, node: Node, beam: int) -> tuple[str, Node | None, list[Node]]:
        """Print one expansion. Returns (text, goal node if reached, kept non-terminal children best-first)."""
        text = trace.state_line(self.target, node.nums, node.ops)
        children = []
        for nums, op in successors(node.nums):
            children.append(Node("", nums, node.ops + [op], self.heuristic(nums, self.target), node))
        children.sort(key=lambda c: c.score)  # stable: ties keep generation order
        children = children[:beam]
        self.rng.shuffle(children)
        kept = []
        for child in children:
            child.node_id = f"{node.node_id},{len(kept)}"
            text += trace.explore_line(child.ops[-1], child.nums)
            if len(child.nums) == 1:
                if child.nums[0] == self.target:
                    return text + trace.goal_line(child.nums[0], self.target), child, []
                text += trace.dead_end_line(child.nums[0], self.target)
            else:
                text += trace.generated_line(child.node_id, self.target, child.nums, child.ops[-1])
                kept.append(child)
        kept.sort(key=lambda c: c.score)
        return text, None, kept


class SoSPlusSolver(BeamSearch):
    def __init__(self, target, heuristic, rng, beam: int, subsearch_probability: float):
        super().__init__(target, heuristic, rng)
        self.beam, self.subsearch_probability = beam, subsearch_probability

    def search(self, start: Node, root: Node, level: int = 0) -> tuple[str, Node | None]:
        text, heap = "", []
        self._push(heap, start)
        while heap:
            current = [heapq.heappop(heap)[2] for _ in range(min(self.beam, len(heap)))]
            for k, node in enumerate(current):
                step, goal, kept = self.expand(node, self.beam)
                text += step
                if goal:
                    return text + summary_path(goal, root, self.target), goal
                if self.rng.random() < self.subsearch_probability:
                    for child in kept:
                        sub, goal = self.search(child, root, level + 1)
                        text += trace.sub_search_start_line(level + 1, child.node_id) + sub
                        text += trace.sub_search_exit_line(level + 1)
                        if goal:
                            return text, goal
                        text += trace.SUB_SEARCH_FAILED
                else:
                    for child in kept:
                        self._push(heap, child)
                if k < len(current) - 1:
                    text += trace.move_line(current[k + 1].node_id)
            if heap:
                text += trace.move_line(heap[0][2].node_id)
        return text + trace.NO_SOLUTION, None


class APRSolver(BeamSearch):
    def __init__(self, target, heuristic, rng, child_beam: int, spawn_probability: float, max_spawn_depth: int):
        super().__init__(target, heuristic, rng)
        self.child_beam, self.spawn_probability, self.max_spawn_depth = child_beam, spawn_probability, max_spawn_depth

    def search(self, start: Node, beam: int, prompt: str, level: int = 0) -> SolverRun:
        # The expansion prints the start state, so the prompt (move line + state) is an exact prefix.
        run = SolverRun(prompt, [trace.move_line(start.node_id)])
        heap = []
        self._push(heap, start)
        while heap:
            current = [heapq.heappop(heap)[2] for _ in range(min(beam, len(heap)))]
            for k, node in enumerate(current):
                step, goal, kept = self.expand(node, beam)
                run.main_calls[-1] += step
                if goal:
                    run.main_calls[-1] += summary_path(goal, start, self.target)
                    run.goal = goal
                    return run
                may_spawn = level < self.max_spawn_depth and len(kept) > 1
                if may_spawn and self.rng.random() < self.spawn_probability:
                    if self.spawn(run, kept, start, level):
                        return run
                else:
                    for child in kept:
                        self._push(heap, child)
                if k < len(current) - 1:
                    run.main_calls[-1] += trace.move_line(current[k + 1].node_id)
            if heap:
                run.main_calls[-1] += trace.move_line(heap[0][2].node_id)
        run.main_calls[-1] += trace.NO_SOLUTION
        return run

    def spawn(self, run: SolverRun, kept: list[Node], start: Node, level: int) -> bool:
        """Run one child per kept node, close this main call with the spawn block, open the next one with
        the join block. Returns True if a child solved it (the parent then writes its goal and summary)."""
        children = [self.search(child, self.child_beam, trace.child_prompt(child.node_id, self.target, child.nums, child.ops), level + 1)
                    for child in kept]
        run.sub_calls.append(children)
        before = run.main_calls[-1]
        run.main_calls[-1] = before + trace.countdown_spawn_block(level + 1, [c.node_id for c in kept])
        results = [(node.node_id, summary_path(child.goal, node, self.target).rstrip("\n") if child.solved else None)
                   for node, child in zip(kept, children)]
        run.main_calls.append(before + trace.countdown_join_block(level + 1, results))
        winner = next((child for child in children if child.solved), None)
        if winner is None:
            return False
        run.main_calls[-1] += trace.goal_line(winner.goal.nums[0], self.target) + summary_path(winner.goal, start, self.target)
        run.goal = winner.goal
        return True


# ---------------------------------------------------------------------------- entry points


def solve_sosp(problem: Problem, cfg, rng: random.Random) -> SolverRun:
    """`cfg` is a SolverConfig. Beam ~ U{sosp_min_beam..sosp_max_beam}."""
    heuristic = HEURISTICS[cfg.heuristic]
    beam = rng.randint(cfg.sosp_min_beam, cfg.sosp_max_beam)
    root = Node("0", list(problem.nums), [], heuristic(problem.nums, problem.target))
    solver = SoSPlusSolver(problem.target, heuristic, rng, beam, cfg.sosp_subsearch_probability)
    text, goal = solver.search(root, root)
    prompt = trace.sosp_prompt(problem.target, problem.nums)
    # The trace starts with the prompt's own state line, so the prompt is its exact prefix.
    assert text.startswith(prompt + "\n")
    return SolverRun(prompt, [text], goal=goal)


def solve_apr(problem: Problem, cfg, rng: random.Random) -> SolverRun:
    """Beam ~ U{apr_min_beam..apr_max_beam}, child beam ~ U{beam..apr_max_child_beam}."""
    heuristic = HEURISTICS[cfg.heuristic]
    beam = rng.randint(cfg.apr_min_beam, cfg.apr_max_beam)
    child_beam = rng.randint(beam, max(beam, cfg.apr_max_child_beam))
    root = Node("0", list(problem.nums), [], heuristic(problem.nums, problem.target))
    solver = APRSolver(problem.target, heuristic, rng, child_beam, cfg.spawn_probability, cfg.max_spawn_depth)
    return solver.search(root, beam, trace.apr_prompt(problem.target, problem.nums))


SOLVERS = {"sosp": solve_sosp, "apr": solve_apr}
