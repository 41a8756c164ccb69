"""Everything that crosses MPI between learners and rollout ranks. Arrays travel as numpy buffers,
the rest as small pickled dataclasses; no torch tensor is ever pickled."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

# MPI tags
GROUP_HEADER, GROUP_DATA, CONTROL, SHARE, SERVER_STATUS = 11, 12, 13, 14, 15

WEIGHT_GROUP_NAME = "weight_update_group"
"""The weight-update process group's name: SGLang's default, used by the learner, the client and our server."""


@dataclass
class Setup:
    """Learner rank 0 -> every rollout rank, once: how to join the weight group and where to start."""

    master_address: str
    master_port: int
    group_world_size: int
    version: int
    first_group: int
    """Group counter this rollout rank resumes from (prompt order is a function of it)."""
    quota: int
    """This rollout rank's share of rl.prompts_per_step: groups it may start per weight version (admission)."""
    rank_offset: int
    """This rank's server joins the weight group as rank_offset + its tensor-parallel rank."""
    backend: str
    """The weight group's backend, the learner's choice (nccl on GPUs, gloo on CPU): both sides must agree."""


@dataclass
class WeightUpdate:
    """A new policy version: the rollout rank drives its server through these buckets while learner rank 0 broadcasts."""

    version: int
    buckets: list[dict]
    """Per bucket the (names, dtypes, shapes) lists of /update_weights_from_distributed."""
    probes: list[str] = field(default_factory=list)
    """Parameters whose first rows the rollout rank reads back from its server after the update."""


@dataclass
class Stop:
    reason: str


@dataclass
class Regroup:
    """Learner rank 0 -> every rollout rank, before a WeightUpdate: leave the weight group (if in one) and join a
    new one here. Sent after a server was restarted, because a process group cannot take back a dead member."""

    master_address: str
    master_port: int
    group_world_size: int
    rank_offset: int
    backend: str


@dataclass
class Ready:
    """Rollout rank -> learner rank 0 (tag SERVER_STATUS), on a WeightUpdate: my server is in the group and
    paused (ok), or it is not (dead, or restarted and not yet regrouped). Learner rank 0 broadcasts only if
    every rank is ready, so a server that died between syncs never breaks a broadcast halfway."""

    rollout_index: int
    ok: bool


@dataclass
class Go:
    """Learner rank 0 -> every rollout rank (tag CONTROL), after the Ready replies: receive the buckets now
    (True), or resume generation and wait for the next attempt (False)."""

    proceed: bool


@dataclass
class ServerDown:
    """Rollout rank -> learner rank 0 (tag SERVER_STATUS): my server died; I am restarting it. Until the matching
    ServerBack, learner rank 0 holds the next weight sync (a broadcast to a dead member would fail)."""

    rollout_index: int
    reason: str


@dataclass
class ServerBack:
    """Rollout rank -> learner rank 0 (tag SERVER_STATUS): my restarted server is healthy but holds the initial
    weights; regroup and send it the current version. It generates nothing until then."""

    rollout_index: int


@dataclass
class ProgramStats:
    correct: bool
    threads: int
    spawns: int
    children: list[int]
    total_tokens: int
    sequential_tokens: int
    longest_thread: int
    latency_s: float
    acceleration: float
    """Total / sequential tokens (apr_ds.rollout.trajectory)."""


@dataclass
class GroupHeader:
    """One finished group (G programs of one prompt): the small part, pickled. Its arrays follow on tag
    GROUP_DATA (`TrajectoryGroup`)."""

    rollout_index: int
    group_index: int
    version: int
    """The oldest weight version any of its programs started with: its staleness is judged by this."""
    rewards: list[float]
    programs: list[ProgramStats]
    rollout_busy_s: float = 0.0
    rollout_idle_s: float = 0.0
    """Cumulative seconds this rollout rank had programs in flight / none (for idle fractions)."""
    weight_probe: tuple[int, dict] | None = None
    """(version, {name: first rows}) read back from the server after its latest update, once per version."""
    array_sizes: list[int] = field(default_factory=list)
    requeued: bool = False
    """Run again after a server restart cancelled its first attempt (which was never shipped)."""


@dataclass
class TrajectoryGroup:
    """A finished group as the learner receives it: the header and its arrays. Every generation call with output
    is one training sequence (its prompt ids, masked, then its sampled ids)."""

    header: GroupHeader
    tokens: np.ndarray
    """int32: every sequence's prompt + output ids, concatenated."""
    logprobs: np.ndarray
    """float32: every sequence's behaviour log-probs of its output ids, concatenated."""
    sequences: np.ndarray
    """int64 [n, 3]: per sequence (prompt length, total length, program index in the group)."""
    line_marks: np.ndarray
    """float32, aligned with `logprobs`: 1 where an output token lies in the wrong part of a checked trace line
    (rollout/line_marks.py), else 0. All zeros when rl.line_penalty is off."""

    ARRAY_DTYPES = (np.int32, np.float32, np.int64, np.float32)

    def arrays(self) -> list[np.ndarray]:
        return [np.ascontiguousarray(a, dtype) for a, dtype in
                zip((self.tokens, self.logprobs, self.sequences, self.line_marks), self.ARRAY_DTYPES)]
