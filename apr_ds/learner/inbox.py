"""Learner rank 0's inbox: finished groups from every rollout rank, taken oldest weight version first.

A group sampled with weights at version v is usable by the learner at version w only while w - v <= rl.max_staleness;
older ones are dropped and counted. `take` waits for groups, but gives up (returning None, the taken groups put
back) as soon as `interrupted()` says a restarted server needs the current weights first: the learner re-syncs it
and comes back.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

from apr_ds.cluster.messages import TrajectoryGroup
from apr_ds.cluster.transport import group_waiting, recv_group


@dataclass
class Taken:
    groups: list[TrajectoryGroup]
    staleness: list[int]
    """Learner version minus each group's version."""
    waited_s: float
    """Seconds spent waiting for groups to arrive."""


@dataclass
class Inbox:
    world: object
    timeout_s: float
    on_arrival: Callable[[TrajectoryGroup], None] = lambda group: None
    buffer: deque = field(default_factory=deque)
    dropped_groups: int = 0
    requeued_groups: int = 0
    consumed: dict[int, int] = field(default_factory=dict)
    """Groups trained on, per rollout rank (checkpointed)."""
    waited_unreported_s: float = 0.0
    """Waiting done by an interrupted `take`: counted in the next one's."""

    def drain(self) -> None:
        """Receive every group waiting (also while rank 0 waits elsewhere, so a rollout rank's sends complete)."""
        while group_waiting(self.world):
            group = recv_group(self.world, self.timeout_s)
            self.on_arrival(group)
            self.requeued_groups += group.header.requeued
            self.buffer.append(group)

    def _wait_for_group(self, interrupted: Callable[[], bool]) -> bool:
        """Block until a group arrives (True) or `interrupted()` (False)."""
        deadline = time.monotonic() + self.timeout_s
        while not group_waiting(self.world):
            if interrupted():
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"no trajectories from any rollout rank for {self.timeout_s:.0f}s")
            time.sleep(0.002)
        self.drain()
        return True

    def take(self, count: int, version: int, max_staleness: int, interrupted: Callable[[], bool]) -> Taken | None:
        """`count` groups usable at learner version `version`, or None if interrupted (the taken ones go back)."""
        taken, self.waited_unreported_s = Taken([], [], self.waited_unreported_s), 0.0
        self.drain()
        while len(taken.groups) < count:
            if not self.buffer:
                started = time.perf_counter()
                arrived = self._wait_for_group(interrupted)
                taken.waited_s += time.perf_counter() - started
                if not arrived:
                    self.buffer.extend(taken.groups)
                    self.waited_unreported_s = taken.waited_s
                    return None
                continue
            self.buffer = deque(sorted(self.buffer, key=lambda g: g.header.version))
            group = self.buffer.popleft()
            age = version - group.header.version
            if age > max_staleness:
                self.dropped_groups += 1
                continue
            taken.groups.append(group)
            taken.staleness.append(age)
        for group in taken.groups:
            index = group.header.rollout_index
            self.consumed[index] = self.consumed.get(index, 0) + 1
        return taken
