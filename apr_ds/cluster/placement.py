"""Which GPUs each rank of one node uses: learners first, one device each, then each inference server its own
tp_size devices, none shared (docs/scaling.md, "GPU placement").

The devices are entries of the list this node's ranks were given: CUDA_VISIBLE_DEVICES when it is set (indices
such as "2,3,6,7", or GPU/MIG UUIDs), else 0..count-1. A rank's value is a sub-list of those entries, never an
index counted from 0, so it stays right under a launcher or cgroup that already narrowed the list. Without devices
(CPU) every rank gets an empty list and nothing is exported.

    devices = plan_node([(0, "learner"), (1, "learner"), (2, "rollout")], tp_size=tp_size_from_server_args(args),
                        device_count=4, cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"), node="g1")
    value = visible_devices_value(devices[2])   # "2,3" with --tp-size 2; None on CPU

Learners come first in rank order, so node-local learner i gets entry i of the node's list: the device a learner
picks with set_device(LOCAL_RANK) when it keeps the whole list, and the one it has as cuda:0 when narrowed to its
own entry (then LOCAL_RANK must not be used as a device index). Pure Python: nothing here imports torch or CUDA.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from apr_ds.errors import UserError

LEARNER, ROLLOUT = "learner", "rollout"
# The spellings rl.server_args may use for SGLang's tensor-parallel size (--tensor-parallel-size, its alias --tp-size).
TP_FLAGS = ("--tp-size", "--tp", "--tensor-parallel-size")


def parse_visible_devices(value: str | None) -> list[str] | None:
    """CUDA_VISIBLE_DEVICES as its entries: None when unset, [] when set empty (no GPU visible)."""
    if value is None:
        return None
    entries = [entry.strip() for entry in value.split(",") if entry.strip()]
    repeated = sorted({entry for entry in entries if entries.count(entry) > 1})
    if repeated:
        raise UserError(f"CUDA_VISIBLE_DEVICES={value} names {', '.join(repeated)} more than once; "
                        f"list each GPU once")
    return entries


def node_devices(device_count: int, cuda_visible_devices: str | None = None) -> list[str]:
    """The devices this node's ranks share: CUDA_VISIBLE_DEVICES's entries if set, else "0".."count-1"."""
    visible = parse_visible_devices(cuda_visible_devices)
    return visible if visible is not None else [str(index) for index in range(device_count)]


def tp_size_from_server_args(server_args: Iterable) -> int:
    """The --tp-size / --tp / --tensor-parallel-size in a server-args list (`N` or `=N`; the last wins), else 1."""
    args = [str(arg) for arg in server_args]  # YAML reads [--tp-size, 2] as a string and an int
    tp_size = 1
    for index, arg in enumerate(args):
        flag, has_value, value = arg.partition("=")
        if flag not in TP_FLAGS:
            continue
        if not has_value:
            value = args[index + 1] if index + 1 < len(args) else ""
        tp_size = _positive_int(flag, value)
    return tp_size


def _positive_int(flag: str, value: str) -> int:
    """`value` as a whole number >= 1, else a UserError naming the flag."""
    try:
        number = int(value)
    except ValueError:
        number = 0
    if number < 1:
        raise UserError(f"rl.server_args: {flag} needs a whole number >= 1, got {value!r}")
    return number


def plan_node(ranks: Iterable[tuple[int, str]], tp_size: int = 1, device_count: int = 0,
              cuda_visible_devices: str | None = None, node: str = "this node") -> dict[int, list[str]]:
    """Devices per node-local (rank, role): one per learner, then tp_size per server, in rank order; [] on CPU."""
    if tp_size < 1:
        raise ValueError(f"tp_size must be >= 1, got {tp_size}")
    learners, rollouts = _split_roles(ranks)
    devices = node_devices(device_count, cuda_visible_devices)
    if not devices:
        return {rank: [] for rank in learners + rollouts}
    plan: dict[int, list[str]] = {}
    taken = 0
    for rank, needed in [(rank, 1) for rank in learners] + [(rank, tp_size) for rank in rollouts]:
        if taken + needed > len(devices):
            raise _too_few(rank, tp_size, plan, set(learners), len(devices), node, cuda_visible_devices)
        plan[rank] = devices[taken:taken + needed]
        taken += needed
    return plan


def _split_roles(ranks: Iterable[tuple[int, str]]) -> tuple[list[int], list[int]]:
    """(learner ranks, rollout ranks), each sorted; a rank listed twice or an unknown role is a caller's bug."""
    by_role: dict[str, list[int]] = {LEARNER: [], ROLLOUT: []}
    seen: set[int] = set()
    for rank, role in ranks:
        if role not in by_role:
            raise ValueError(f"rank {rank} has role {role!r}; expected {LEARNER!r} or {ROLLOUT!r}")
        if rank in seen:
            raise ValueError(f"rank {rank} is listed twice")
        seen.add(rank)
        by_role[role].append(rank)
    return sorted(by_role[LEARNER]), sorted(by_role[ROLLOUT])


def _too_few(rank: int, tp_size: int, plan: dict[int, list[str]], learners: set[int], visible: int, node: str,
             cuda_visible_devices: str | None) -> UserError:
    """The error for a rank that finds too few devices left: who holds them, and what to change."""
    source = f" (CUDA_VISIBLE_DEVICES={cuda_visible_devices})" if cuda_visible_devices is not None else ""
    held_by_learners = [r for r in plan if r in learners]
    held_by_servers = [r for r in plan if r not in learners]
    holders = []
    if held_by_learners:
        holders.append(f"its {_count(len(held_by_learners), 'learner')} take{_verb_s(len(held_by_learners))} "
                       f"{len(held_by_learners)}")
    if held_by_servers:
        holders.append(f"rollout rank{_s(len(held_by_servers))} {', '.join(map(str, held_by_servers))} "
                       f"take{_verb_s(len(held_by_servers))} {len(held_by_servers) * tp_size}")
    held = f", of which {' and '.join(holders)}" if holders else ""
    if rank in learners:
        want, fix = "a GPU", "start fewer learner ranks on this node or give it more GPUs"
    else:
        want = f"{_count(tp_size, 'GPU')} for --tp-size {tp_size}"
        fix = "put fewer rollout ranks on this node, lower --tp-size in rl.server_args, or give the node more GPUs"
    role = LEARNER if rank in learners else ROLLOUT
    return UserError(f"{role} rank {rank} needs {want}, but too few are left: node {node} has "
                     f"{_count(visible, 'GPU')} visible{source}{held}; {fix}")


def _s(count: int) -> str:
    return "" if count == 1 else "s"


def _verb_s(count: int) -> str:
    """English agreement: "rank 3 takes", "ranks 3, 4 take"."""
    return "s" if count == 1 else ""


def _count(count: int, noun: str) -> str:
    return f"{count} {noun}{_s(count)}"


def visible_devices_value(devices: Sequence[str]) -> str | None:
    """What to export as a rank's CUDA_VISIBLE_DEVICES; None on CPU, where nothing is set."""
    return ",".join(devices) if devices else None


def weight_group_layout(num_servers: int, tp_size: int) -> tuple[int, list[int]]:
    """(world size, offset per server) of the weight group: learner rank 0 is 0, server i joins at 1 + i*tp_size."""
    if num_servers < 0 or tp_size < 1:
        raise ValueError(f"need num_servers >= 0 and tp_size >= 1, got {num_servers} and {tp_size}")
    return 1 + num_servers * tp_size, [1 + index * tp_size for index in range(num_servers)]
