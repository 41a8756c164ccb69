"""This test process as learner rank 0 of a weight group with one server, pushing buckets the way a rollout rank
drives its server (apr_ds/weight_sync/receiver.py: pause -> session -> buckets -> flush -> continue) while this
process broadcasts them, as learner rank 0 does. No MPI: the Ready/Go handshake is what the RL seam tests cover."""

import asyncio

from apr_ds.cluster.messages import WeightUpdate
from apr_ds.cluster.ports import free_port
from apr_ds.cluster.weight_group import broadcast_tensors, bucket_metadata, init_weight_group
from apr_ds.weight_sync.receiver import WeightReceiver


async def connect(client, timeout_s: float = 120):
    """Create the group as rank 0 while the server joins as rank 1 (both block until the other arrives)."""
    port = free_port()
    group, _ = await asyncio.gather(
        asyncio.to_thread(init_weight_group, "127.0.0.1", port, 0, 2, backend="gloo", timeout_s=timeout_s),
        client.init_weights_update_group("127.0.0.1", port, rank_offset=1, world_size=2, backend="gloo"))
    return group


async def push(client, group, buckets, weight_version: str, pause_mode: str = "abort") -> None:
    """`buckets` of (name, tensor) into the server; generation continues even if the update fails."""
    receiver = WeightReceiver(client, world=None, rollout_index=0, admit=asyncio.Event())
    update = WeightUpdate(weight_version, [bucket_metadata(bucket) for bucket in buckets])

    def broadcast() -> None:
        for bucket in buckets:
            broadcast_tensors(group, [tensor for _, tensor in bucket])
    await client.pause_generation(pause_mode)
    try:
        await asyncio.gather(receiver.receive(update), asyncio.to_thread(broadcast))
    finally:
        await client.continue_generation()
