"""The rollout side of the weight-version protocol: a rollout rank's `WeightReceiver` drives its server through
each update that learner rank 0 publishes (the other side is publisher.py; the HTTP calls are rollout/client.py).

    join(setup)        the server joins the weight group at its rank offset
    apply(update)      pause (abort) -> Ready -> Go -> /update_weights_from_distributed per bucket, inside SGLang's
                       weight-update session where the server has one, while learner rank 0 broadcasts ->
                       /flush_cache -> /continue_generation -> read the probe parameters back
    regroup(message)   leave the old group (if in one) and join the new one, after a server restart
    server_down/back   tell learner rank 0 that the server died and is restarting / is back with initial weights

Pause mode abort, as slime uses it: every running request is answered with what it has so far and its program
goes on from there (a partial rollout) once the update is done, with the new weights. While the weights change
`admit` is cleared and the rank sends no request, so the server is idle and /flush_cache succeeds on SGLang too
(SGLang refuses to flush while requests wait, retracted ones included). Each token keeps the behaviour log-prob of
the weights that sampled it.
"""

from __future__ import annotations

import asyncio
from typing import Awaitable, Callable

from apr_ds.cluster.messages import CONTROL, SERVER_STATUS, Go, Ready, Regroup, ServerBack, ServerDown, Setup, WeightUpdate
from apr_ds.errors import ServerError
from apr_ds.log import get_logger

log = get_logger(__name__)


class WeightReceiver:
    def __init__(self, client, world, rollout_index: int, admit: asyncio.Event):
        """`client`: the server's RolloutClient; `admit`: set while the rank may send generation requests."""
        self.client, self.world, self.index, self.admit = client, world, rollout_index, admit
        self.in_group = False
        self.can_read_back = True
        self.read_backs = 0
        self.probe: tuple[int, dict] | None = None
        """(version, {name: first rows}) read back after the latest update, shipped once with the next group."""

    async def join(self, setup: Setup) -> None:
        await self.client.init_weights_update_group(setup.master_address, setup.master_port,
                                                    rank_offset=setup.rank_offset, world_size=setup.group_world_size,
                                                    backend=setup.backend)
        self.in_group = True

    async def regroup(self, message: Regroup) -> None:
        if self.in_group:
            await self.client.destroy_weights_update_group()
        await self.client.init_weights_update_group(message.master_address, message.master_port,
                                                    rank_offset=message.rank_offset,
                                                    world_size=message.group_world_size, backend=message.backend)
        self.in_group = True

    async def leave(self) -> None:
        if self.in_group:
            await self.client.destroy_weights_update_group()
            self.in_group = False

    def server_down(self, reason: str) -> None:
        self.world.send(ServerDown(self.index, reason), dest=0, tag=SERVER_STATUS)
        self.in_group = False  # a restarted server is in no group until learner rank 0 sends Regroup

    def server_back(self) -> None:
        self.world.send(ServerBack(self.index), dest=0, tag=SERVER_STATUS)

    async def apply(self, update: WeightUpdate, server_alive: bool,
                    server_gone: Callable[[], Awaitable[bool]]) -> bool:
        """True once the server holds `update.version`. False when it did not take it: another server was not
        ready (no Go; this one just resumes and learner rank 0 retries), this one was not ready, or it died once the
        broadcast was over (`server_gone()`; the rank restarts it and learner rank 0 regroups and sends it again)."""
        ready = self.in_group and server_alive
        self.admit.clear()
        if ready:
            try:
                await self.client.pause_generation("abort")
            except ServerError:
                ready = False
        self.world.send(Ready(self.index, ready), dest=0, tag=SERVER_STATUS)
        go: Go = self.world.recv(source=0, tag=CONTROL)
        received = ready and go.proceed
        try:
            if received:
                await self.receive(update)
            if ready:
                await self.client.continue_generation()
            if received and self.can_read_back:  # read back what the server holds; learner rank 0 checks it
                self.probe = await self.read_back(update)
        except ServerError as e:
            if e.status is not None or not await server_gone():
                raise
            # SGLang's session, flush and resume take a while: a server can die after the broadcast is over
            log.warning(f"rollout rank {self.index}: the server died while applying version {update.version}")
            return False
        finally:
            self.admit.set()
        return received

    async def receive(self, update: WeightUpdate) -> None:
        """The buckets, inside the server's weight-update session, then a flush (the server is paused)."""
        async with self.client.weight_update_session():
            for bucket in update.buckets:
                await self.client.update_weights_from_distributed(bucket["names"], bucket["dtypes"], bucket["shapes"],
                                                                  weight_version=str(update.version))
        await self.client.flush_cache()

    async def read_back(self, update: WeightUpdate) -> tuple[int, dict] | None:
        """The probe parameters' first rows as the server now reports them. A server that refuses the very first
        read-back (SGLang's Qwen model classes have no `get_weights_by_name`; its Llama has) is not asked again: its
        versions go unchecked, which the learner's sync/checked_versions shows. A refusal after reads have worked
        is an error, as any other."""
        try:
            rows = {name: await self.client.get_weights_by_name(name, truncate_size=2) for name in update.probes}
        except ServerError as e:
            if e.status is None or e.status >= 500 or self.read_backs:
                raise
            self.can_read_back = False
            log.warning(f"rollout rank {self.index}: the server cannot read weights back by name ({e}); "
                        f"weight versions are not checked against what the learners sent")
            return None
        self.read_backs += 1
        return update.version, rows

    def take_probe(self) -> tuple[int, dict] | None:
        probe, self.probe = self.probe, None
        return probe
