"""Everything that crosses MPI between learners and rollout ranks. Arrays travel as numpy buffers,
the rest as small pickled dataclasses; no torch tensor is ever pickled."""

from __future__ import annotations

from dataclasses import dataclass, field

# MPI tags
GROUP_HEADER, GROUP_DATA, CONTROL, SHARE = 11, 12, 13, 14


@dataclass
class Setup:
    """Learner rank 0 -> every rollout rank, once: how to join the weight group and where to start."""

    master_address: str
    master_port: int
    group_world_size: int
    version: int
    first_group: int
    """Group counter this rollout rank resumes from (prompt order is a function of it)."""


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
class ProgramStats:
    correct: bool
    threads: int
    spawns: int
    children: list[int]
    total_tokens: int
    sequential_tokens: int
    longest_thread: int
    latency_s: float


@dataclass
class GroupHeader:
    """One finished group (G programs of one prompt). Its arrays follow on tag GROUP_DATA:
    tokens (int32, every sequence's prompt + output ids, concatenated), behaviour log-probs (float32, every
    sequence's output tokens, concatenated), and the sequence table (int64 [n, 3]: prompt length, total
    length, program index in the group)."""

    rollout_index: int
    group_index: int
    version: int
    """The oldest weight version any of its programs started with: its staleness is judged by this."""
    rewards: list[float]
    programs: list[ProgramStats]
    num_sequences: int
    num_tokens: int
    num_output_tokens: int
    rollout_busy_s: float = 0.0
    rollout_idle_s: float = 0.0
    """Cumulative seconds this rollout rank had programs in flight / none (for idle fractions)."""
    weight_probe: tuple[int, dict] | None = None
    """(version, {name: first rows}) read back from the server after its latest update, once per version."""
    array_sizes: list[int] = field(default_factory=list)
