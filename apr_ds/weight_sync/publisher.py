"""The learner side of the weight-version protocol: every learner rank holds a `WeightPublisher`; learner rank 0
speaks to the rollout ranks (the other side is receiver.py, and the messages are apr_ds/cluster/messages.py).

    connect(version)   Setup to every rollout rank (the weight group's rendezvous, its rank offset, where its
                       group counter starts, its admission quota); learner rank 0 creates the group as its rank 0
    publish(version)   wait for restarted servers -> Regroup if any -> WeightUpdate -> every Ready -> Go -> the
                       buckets broadcast (all learners gather, rank 0 sends) -> read-back probes checked later
    stop(reason)       Stop to every rollout rank

A server may die between two syncs. Its rollout rank reports ServerDown, restarts it and reports ServerBack;
`publish` holds until it is back, then rebuilds the group (a process group keeps its dead member) before it
sends. A server that dies after saying Ready is a lost broadcast: the job ends with a message naming the last
checkpoint. Without every Ready the broadcast does not start (Go(False)); publish retries once the server is back.
"""

from __future__ import annotations

import time
from typing import Callable

from apr_ds.cluster.messages import CONTROL, SERVER_STATUS, Go, Ready, Regroup, ServerBack, ServerDown, Setup, Stop, WeightUpdate
from apr_ds.errors import UserError
from apr_ds.log import get_logger

log = get_logger(__name__)

SendWeights = Callable[[object, bool], tuple[int, dict]]
"""(group, is_sender) -> (bytes sent, {probe name: first rows sent}): the learner's bucketed broadcast, which
every learner rank calls (the gather is collective) and only the sender sends."""


def admission_quota(prompts_per_step: int, num_rollouts: int, rollout_index: int) -> int:
    """A rollout rank's share of a step's groups: what it may start per weight version (rollout/rank.py admits by it)."""
    base, extra = divmod(prompts_per_step, num_rollouts)
    return base + (rollout_index < extra)


class WeightPublisher:
    def __init__(self, roles, rl, buckets: list[dict], probes: list[str], send_weights: SendWeights,
                 drain: Callable[[], None]):
        """`buckets`: each bucket's (names, dtypes, shapes) for /update_weights_from_distributed; `probes`: the
        parameters read back after each sync; `drain`: receive waiting trajectory groups (so a rollout rank's
        sends complete while rank 0 waits here)."""
        from apr_ds.cluster.placement import tp_size_from_server_args, weight_group_layout
        from apr_ds.cluster.weight_group import default_backend
        self.roles, self.rl, self.buckets, self.probes = roles, rl, buckets, probes
        self.send_weights, self.drain = send_weights, drain
        self.is_root = roles.role_comm.Get_rank() == 0
        # every server rank joins: an SGLang server with --tp-size T takes T ranks of the group
        tp_size = tp_size_from_server_args(rl.server_args) if rl.server == "sglang" else 1
        self.group_size, self.offsets = weight_group_layout(roles.num_rollouts, tp_size)
        self.backend = default_backend()  # the learner's choice, sent to every server in Setup and Regroup
        self.group = None
        self.down: dict[int, str] = {}  # rollout index -> why its server died; it is restarting
        self.back: set[int] = set()  # restarted and healthy, waiting for a new group and the current weights
        self.ready: dict[int, bool] = {}
        self.sent_probes: dict[int, dict] = {}
        self.server_restarts = self.probes_checked = self.probe_mismatches = 0

    # ------------------------------------------------------------------ learner rank 0 <-> rollout ranks

    def _send_each(self, message_for: Callable[[int], object]) -> None:
        for index in range(self.roles.num_rollouts):
            self.roles.world.send(message_for(index), dest=self.roles.rollout_world_rank(index), tag=CONTROL)

    def _new_group(self, announce: Callable[[int, int], object]) -> None:
        """Reserve a port, announce it to every rollout rank, create the group as its rank 0 (all join at once)."""
        from apr_ds.cluster.ports import reserve_port
        from apr_ds.cluster.weight_group import init_weight_group
        # listening from now on, so the port cannot be taken before the store takes the socket over
        address = self.roles.host_address
        port = reserve_port(address)
        self._send_each(lambda index: announce(index, port))
        self.group = init_weight_group(address, port, rank=0, world_size=self.group_size, backend=self.backend,
                                       timeout_s=self.rl.timeout_s)

    def connect(self, version: int) -> None:
        """Once, before the first step: every server joins the weight group at `version` (0, or a resumed one)."""
        if not self.is_root:
            return
        rl, address = self.rl, self.roles.host_address

        def setup(index: int, port: int) -> Setup:
            quota = admission_quota(rl.prompts_per_step, self.roles.num_rollouts, index)
            return Setup(address, port, self.group_size, version, version * quota, quota, self.offsets[index],
                         self.backend)
        self._new_group(setup)

    def _regroup(self) -> None:
        from apr_ds.cluster.weight_group import destroy_weight_group
        destroy_weight_group(self.group)
        self._new_group(lambda index, port: Regroup(self.roles.host_address, port, self.group_size,
                                                    self.offsets[index], self.backend))
        log.info(f"weight group rebuilt for the restarted server(s) of rollout rank(s) {sorted(self.back)}")
        self.back.clear()

    def stop(self, reason: str) -> None:
        if self.is_root:
            self._send_each(lambda _: Stop(reason))

    # ------------------------------------------------------------------ status from the rollout ranks

    def poll(self) -> None:
        """Take in every status message waiting (learner rank 0)."""
        from mpi4py import MPI
        world = self.roles.world
        while world.Iprobe(source=MPI.ANY_SOURCE, tag=SERVER_STATUS):
            message = world.recv(source=MPI.ANY_SOURCE, tag=SERVER_STATUS)
            if isinstance(message, ServerDown):
                self.down[message.rollout_index] = message.reason
                self.server_restarts += 1
                log.warning(f"rollout rank {message.rollout_index}: server died ({message.reason}); it is restarting")
            elif isinstance(message, ServerBack):
                self.down.pop(message.rollout_index, None)
                self.back.add(message.rollout_index)
            elif isinstance(message, Ready):
                self.ready[message.rollout_index] = message.ok

    def servers_waiting(self) -> bool:
        """A restarted server waits for the current weights before it generates again (learner rank 0)."""
        self.poll()
        return bool(self.back)

    def _wait_until(self, done: Callable[[], bool], failure: Callable[[], str]) -> None:
        deadline = time.monotonic() + self.rl.timeout_s
        self.poll()
        while not done():
            if time.monotonic() > deadline:
                raise UserError(failure())
            self.drain()
            time.sleep(0.002)
            self.poll()

    def _all_ready(self) -> bool:
        """Every rollout rank's Ready to the WeightUpdate just sent; True if every server can receive."""
        expected = set(range(self.roles.num_rollouts))
        self._wait_until(lambda: len(self.ready) >= len(expected), lambda: (
            f"rollout rank(s) {sorted(expected - set(self.ready))} did not answer a weight update within "
            f"{self.rl.timeout_s:.0f}s (rl.timeout_s)"))
        ready, self.ready = all(self.ready.values()), {}
        return ready

    def check_probe(self, probe: tuple[int, dict] | None) -> None:
        """Compare what a server read back after version v with what was sent for v."""
        if probe is not None and probe[0] in self.sent_probes:
            self.probes_checked += 1
            self.probe_mismatches += probe[1] != self.sent_probes[probe[0]]

    # ------------------------------------------------------------------ one sync

    def _announce(self, version: int) -> bool:
        """Learner rank 0: bring restarted servers into a new group, offer the version, collect the answers."""
        timeout = f"{self.rl.timeout_s:.0f}s (rl.timeout_s)"
        self._wait_until(lambda: not self.down, lambda: (
            f"the server of rollout rank(s) {sorted(self.down)} did not come back within {timeout}; see their logs"))
        if self.back:
            self._regroup()
        update = WeightUpdate(version, self.buckets, self.probes)
        self._send_each(lambda _: update)
        proceed = self._all_ready()
        self._send_each(lambda _: Go(proceed))
        return proceed

    def publish(self, version: int, checkpoint_dir) -> dict:
        """Every learner rank: bring every server to `version`. Returns the sync's scalars."""
        started, attempt, transfer_s = time.perf_counter(), 0, 0.0
        while True:
            proceed = self._announce(version) if self.is_root else True
            try:  # every learner gathers (collective); only rank 0 broadcasts, and only if every server is ready
                transfer_started = time.perf_counter()
                sent, seen = self.send_weights(self.group, self.is_root and proceed)
                transfer_s += time.perf_counter() - transfer_started
            except RuntimeError as e:  # gloo/NCCL: a server died in the milliseconds since it said Ready
                raise UserError(f"weight sync of version {version} failed: a server of the weight group died or left "
                                f"({str(e).splitlines()[0]}); the last checkpoint is in {checkpoint_dir}") from None
            if self.roles.role_comm.bcast(proceed, root=0):
                break
            attempt += 1
            if self.is_root:
                log.warning(f"weight sync of version {version}: a server was not ready; waiting for its restart "
                            f"(attempt {attempt})")
                self._wait_until(lambda: self.down or self.back, lambda: (
                    f"a rollout rank's server could not take a weight update and was not restarted within "
                    f"{self.rl.timeout_s:.0f}s (rl.timeout_s); see the server logs"))
        if self.is_root:
            self.sent_probes[version] = seen
        total_s = time.perf_counter() - started
        # transfer: the gather and the buckets' broadcast; protocol: everything else a version costs the learners
        # (the update's announcement, every Ready, Go), which does not shrink with the weights
        return {"sync/ms": 1000 * total_s, "sync/transfer_ms": 1000 * transfer_s,
                "sync/protocol_ms": 1000 * (total_s - transfer_s), "sync/bytes": float(sent)}

    def scalars(self) -> dict:
        return {"faults/server_restarts": float(self.server_restarts),
                "sync/checked_versions": float(self.probes_checked),
                "sync/mismatched_versions": float(self.probe_mismatches)}
