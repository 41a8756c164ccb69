"""The weight-update process group, built the way SGLang's `/init_weights_update_group` builds it.

Learner rank 0 is rank 0 of this group; each inference-server rank joins at `rank_offset + tp_rank`.
The group lives outside any default group: a TCPStore (hosted by rank 0) wrapped in a
PrefixStore(group_name), handed to torch's `_new_process_group_helper`. A plain
`init_process_group` would use a different key layout and never rendezvous with SGLang.
Both sides must call `init_weight_group` at the same time (each blocks until all ranks joined).

Rank 0 hosts the store on a socket that listens on `master_address` alone (torch's own TCPStore would listen
on every interface): the socket `apr_ds.cluster.ports.reserve_port` set aside for that port, else one bound here.
The other ranks connect with a plain `rendezvous("tcp://address:port")`, exactly as SGLang does.

Tensors travel in a fixed order: the sender broadcasts a bucket's tensors in list order and every
receiver allocates and receives them in the same order, from the (names, dtypes, shapes) lists that
`/update_weights_from_distributed` carries.

    group = init_weight_group("127.0.0.1", 29600, rank=0, world_size=2)   # learner side
    broadcast_tensors(group, [t for _, t in bucket])
    destroy_weight_group(group)

gloo on CPU, nccl on GPU (tensors must then live on the current CUDA device).
"""

from __future__ import annotations

import datetime
import math

import torch
import torch.distributed as dist

from apr_ds.cluster.messages import WEIGHT_GROUP_NAME
from apr_ds.errors import UserError

DEFAULT_TIMEOUT_S = 300.0


def default_backend() -> str:
    return "nccl" if torch.cuda.is_available() else "gloo"


def init_weight_group(master_address: str, master_port: int, rank: int, world_size: int,
                      group_name: str = WEIGHT_GROUP_NAME, backend: str | None = None,
                      timeout_s: float = DEFAULT_TIMEOUT_S) -> dist.ProcessGroup:
    """Join (rank 0: create) the group. Blocks until all `world_size` ranks have joined."""
    from torch.distributed.distributed_c10d import Backend, PrefixStore, _new_process_group_helper, _world, rendezvous

    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside a weight group of world_size {world_size}")
    timeout = datetime.timedelta(seconds=timeout_s)
    if rank == 0:
        store = host_store(master_address, master_port, world_size, timeout)
    else:  # what SGLang's init_custom_process_group does: keep it so, or the two stop meeting
        store, rank, world_size = next(rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    store = PrefixStore(group_name, store)  # keeps our keys apart from any other user of the store
    group, _ = _new_process_group_helper(world_size, rank, [], Backend(backend or default_backend()), store,
                                         group_name=group_name, timeout=timeout)
    # Register the identity rank map so torch.distributed.broadcast(..., group=group) can translate src.
    _world.pg_group_ranks[group] = {i: i for i in range(world_size)}
    return group


def host_store(address: str, port: int, world_size: int, timeout: datetime.timedelta) -> dist.TCPStore:
    """The TCPStore a rendezvous at tcp://address:port would start on rank 0, but listening on `address` only.
    Blocks until `world_size` ranks (this one included) have connected, as that one does."""
    from apr_ds.cluster.ports import claim_port, listening_socket
    listener = claim_port(address, port)
    if listener is None:
        try:
            listener = listening_socket(address, port)
        except OSError as e:
            raise UserError(f"cannot listen on {address}:{port} for a rendezvous store ({e.strerror}); the address must "
                            f"be one of this machine's (apr_ds/cluster/net.py chooses it) and the port free") from None
    # the store owns the socket from here, and closes it when it is destroyed
    return dist.TCPStore(address, port, world_size, is_master=True, timeout=timeout, wait_for_workers=True,
                         master_listen_fd=listener.detach(), use_libuv=True)


def destroy_weight_group(group: dist.ProcessGroup) -> None:
    dist.destroy_process_group(group)


def broadcast_tensors(group: dist.ProcessGroup, tensors: list[torch.Tensor], src: int = 0) -> None:
    """Sender side: broadcast each tensor in list order."""
    for tensor in tensors:
        dist.broadcast(tensor.detach().contiguous(), src=src, group=group)


def receive_tensors(group: dist.ProcessGroup, dtypes: list[torch.dtype], shapes: list[list[int]],
                    src: int = 0, device: str | torch.device = "cpu") -> list[torch.Tensor]:
    """Receiver side: allocate and receive one tensor per (dtype, shape), in list order."""
    received = []
    for dtype, shape in zip(dtypes, shapes, strict=True):
        tensor = torch.empty(shape, dtype=dtype, device=device)
        dist.broadcast(tensor, src=src, group=group)
        received.append(tensor)
    return received


def dtype_name(dtype: torch.dtype) -> str:
    """torch.bfloat16 -> "bfloat16", the spelling SGLang's `dtypes` lists use."""
    return str(dtype).removeprefix("torch.")


def parse_dtype(name: str) -> torch.dtype:
    dtype = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} (expected e.g. 'float32' or 'bfloat16')")
    return dtype


def bucket_metadata(named_tensors: list[tuple[str, torch.Tensor]]) -> dict:
    """The (names, dtypes, shapes) lists `/update_weights_from_distributed` takes for one bucket."""
    return {"names": [name for name, _ in named_tensors],
            "dtypes": [dtype_name(t.dtype) for _, t in named_tensors],
            "shapes": [full_shape(t) for _, t in named_tensors]}


def full_shape(tensor: torch.Tensor) -> list[int]:
    """The whole tensor's shape, also for a ZeRO-3 partitioned parameter (whose local shape is empty)."""
    return list(getattr(tensor, "ds_shape", tensor.shape))


def full_nbytes(tensor: torch.Tensor) -> int:
    return math.prod(full_shape(tensor)) * tensor.element_size()


def plan_buckets(named_tensors: list[tuple[str, torch.Tensor]], bucket_bytes: int) -> list[list[tuple[str, torch.Tensor]]]:
    """Split tensors, in order, into buckets of at most `bucket_bytes` (a bigger tensor gets a bucket alone)."""
    buckets, current, size = [], [], 0
    for name, tensor in named_tensors:
        nbytes = full_nbytes(tensor)
        if current and size + nbytes > bucket_bytes:
            buckets.append(current)
            current, size = [], 0
        current.append((name, tensor))
        size += nbytes
    if current:
        buckets.append(current)
    return buckets
