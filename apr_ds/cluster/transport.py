"""Trajectories from rollout ranks to learners over MPI, and balanced shares among learners.

Rollout ranks send finished groups with non-blocking sends (their event loop never waits on a learner);
learner rank 0 receives them, and splits each batch's sequences over the learner ranks balanced by
tokens. Every learner then runs the same number of micro-steps (the shortest shares get empty
micro-batches): ZeRO-3 gathers parameters collectively, so unequal counts would hang.
"""

from __future__ import annotations

import time

import numpy as np

from apr_ds.cluster.messages import GROUP_DATA, GROUP_HEADER, SHARE, TrajectoryGroup


class PendingSends:
    """Non-blocking sends still in flight; the buffers stay referenced until MPI is done with them."""

    def __init__(self):
        self._requests: list = []
        self._buffers: list = []

    def add(self, requests: list, buffers: list) -> None:
        self._requests += requests
        self._buffers += buffers

    def poll(self) -> None:
        from mpi4py import MPI
        if self._requests and MPI.Request.Testall(self._requests):
            self._requests, self._buffers = [], []

    def wait(self) -> None:
        from mpi4py import MPI
        MPI.Request.Waitall(self._requests)
        self._requests, self._buffers = [], []


def send_group(comm, dest: int, group: TrajectoryGroup, pending: PendingSends) -> None:
    arrays = group.arrays()
    group.header.array_sizes = [a.size for a in arrays]
    requests = [comm.isend(group.header, dest=dest, tag=GROUP_HEADER)]
    requests += [comm.Isend(a, dest=dest, tag=GROUP_DATA) for a in arrays]
    pending.add(requests, arrays)


def group_waiting(comm) -> bool:
    from mpi4py import MPI
    return comm.Iprobe(source=MPI.ANY_SOURCE, tag=GROUP_HEADER)


def recv_group(comm, timeout_s: float) -> TrajectoryGroup:
    """The next group from any rollout rank (polling, so a silent world ends in a clear error, not a hang)."""
    from mpi4py import MPI
    status = MPI.Status()
    deadline = time.monotonic() + timeout_s
    while not comm.Iprobe(source=MPI.ANY_SOURCE, tag=GROUP_HEADER, status=status):
        if time.monotonic() > deadline:
            raise TimeoutError(f"no trajectories from any rollout rank for {timeout_s:.0f}s")
        time.sleep(0.002)
    source = status.Get_source()
    header = comm.recv(source=source, tag=GROUP_HEADER)
    arrays = []
    for dtype, size in zip(TrajectoryGroup.ARRAY_DTYPES, header.array_sizes, strict=True):
        buffer = np.empty(size, dtype)
        comm.Recv(buffer, source=source, tag=GROUP_DATA)
        arrays.append(buffer)
    tokens, logprobs, sequences, line_marks = arrays
    return TrajectoryGroup(header, tokens, logprobs, sequences.reshape(-1, 3), line_marks)


def balance(lengths: list[int], parts: int) -> list[list[int]]:
    """Split item indices into `parts` lists with near-equal token sums (longest first, each to the lightest part)."""
    shares: list[list[int]] = [[] for _ in range(parts)]
    loads = [0] * parts
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        lightest = loads.index(min(loads))
        shares[lightest].append(i)
        loads[lightest] += lengths[i]
    return shares


def scatter_shares(comm, shares: list | None):
    """Learner rank 0 sends each learner its share (small dataclasses of numpy arrays); returns this rank's own."""
    if comm.Get_rank() == 0:
        requests = [comm.isend(shares[r], dest=r, tag=SHARE) for r in range(1, comm.Get_size())]
        from mpi4py import MPI
        MPI.Request.Waitall(requests)
        return shares[0]
    return comm.recv(source=0, tag=SHARE)
