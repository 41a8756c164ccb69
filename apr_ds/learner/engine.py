"""The DeepSpeed engine: a ds_configs/ file + a learner's `deepspeed` and `optim` sections -> an initialised ZeRO-3 engine.

SFT and RL build theirs the same way, each from its own sections (`sft.*` or `rl.*`). Order of use:

    ds_config = load_ds_config(sft.deepspeed, sft.optim, sft.global_batch, world_size_from_env(), "sft")  # checks only
    init_distributed()                                                  # gloo on CPU, NCCL on GPU
    engine = build_engine(model, sft.optim, sft.steps, ds_config)       # AdamW + its schedule, ZeRO-3 partitioned

DeepSpeed config files (ds_configs/*.json) leave the values the YAML owns as "auto": batch sizes,
accumulation and gradient clipping are filled in from the YAML; a number written there instead must
agree with it, and so must `bf16.enabled` with `<section>.deepspeed.precision`. The optimizer and its
schedule always come from `<section>.optim`, so a ds config may not define them.

Nothing here touches CUDA at import time: torch and deepspeed are imported inside the functions,
and without a GPU `DS_ACCELERATOR=cpu` is set before deepspeed is imported.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

from typing import TYPE_CHECKING

from apr_ds.cluster.ports import claim_port, reserve_port
from apr_ds.errors import UserError

if TYPE_CHECKING:
    from apr_ds.config import DeepSpeedConfig, OptimConfig

DS_CONFIG_DIR = Path(__file__).resolve().parents[2] / "ds_configs"
_WORLD_SIZE_ENV = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
_LAUNCHER_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "LOCAL_RANK")
COMM_OP = "deepspeed_shm_comm"
STALE_LOCK_S = 600
_GLOBAL_BATCH_KEYS = {"sft": "sft.global_batch"}  # RL has no key of its own for it: micro-batch x learner ranks


# ---------------------------------------------------------------------------- the DeepSpeed config


def resolve_ds_config(name: str, key: str) -> Path:
    """A path as given, else a file name in ds_configs/. `key` is the config key that named it, for the message."""
    for path in (Path(name), DS_CONFIG_DIR / name):
        if path.is_file():
            return path
    choices = ", ".join(sorted(p.name for p in DS_CONFIG_DIR.glob("*.json")))
    raise UserError(f"DeepSpeed config {name!r} ({key}) not found as a path or in {DS_CONFIG_DIR}; choose one of {choices}")


def load_ds_config(deepspeed: DeepSpeedConfig, optim: OptimConfig, global_batch: int, world_size: int, section: str) -> dict:
    """Read the ds config `deepspeed.config` names, fill its "auto" values from the YAML, and check the rest agree.

    `section` ("sft" or "rl") is where `deepspeed` and `optim` live in the YAML, so that messages name the real keys.
    RL's batch changes every step (set_train_batch_size); its `global_batch` here is nominal.
    """
    micro_key, clip_key, precision_key = (f"{section}.deepspeed.micro_batch", f"{section}.optim.grad_clip",
                                          f"{section}.deepspeed.precision")
    batch_key = _GLOBAL_BATCH_KEYS.get(section, f"{micro_key} x {world_size} ranks")
    path = resolve_ds_config(deepspeed.config, f"{section}.deepspeed.config")
    try:
        ds = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise UserError(f"DeepSpeed config {path} is not valid JSON: {e}") from None

    micro_batch = deepspeed.micro_batch
    if global_batch % (micro_batch * world_size):
        raise UserError(f"world size {world_size} does not divide the batch: {batch_key}={global_batch} is not a "
                        f"multiple of {micro_key}={micro_batch} x {world_size} ranks; change the batch, the micro-batch "
                        f"or the number of ranks")
    accumulation = global_batch // (micro_batch * world_size)
    wanted = {
        "train_batch_size": (global_batch, batch_key),
        "train_micro_batch_size_per_gpu": (micro_batch, micro_key),
        "gradient_accumulation_steps": (accumulation, f"{batch_key} / ({micro_key} x {world_size} ranks)"),
        "gradient_clipping": (optim.grad_clip, clip_key),
    }
    for key, (value, source) in wanted.items():
        given = ds.get(key, "auto")
        if given != "auto" and not math.isclose(float(given), float(value)):
            raise UserError(f"DeepSpeed config {path.name} sets {key}={given} but the YAML gives {value} ({source}); "
                            f"set it to \"auto\" in the ds config or make the two agree")
        ds[key] = value

    for part in ("optimizer", "scheduler"):
        if part in ds:
            raise UserError(f"DeepSpeed config {path.name} defines {part!r}, but the optimizer and its schedule come from "
                            f"the YAML ({section}.optim); remove the {part!r} section")
    if ds.get("fp16", {}).get("enabled") is True:
        raise UserError(f"DeepSpeed config {path.name} enables fp16; apr-ds trains in fp32 or bf16 ({precision_key})")
    bf16 = ds.setdefault("bf16", {}).get("enabled", "auto")
    if bf16 == "auto":
        ds["bf16"]["enabled"] = deepspeed.precision == "bf16"
    elif bool(bf16) != (deepspeed.precision == "bf16"):
        raise UserError(f"DeepSpeed config {path.name} has bf16.enabled={str(bf16).lower()} but "
                        f"{precision_key}={deepspeed.precision}; use a ds config matching the precision "
                        f"(zero3_cpu.json is fp32, zero3.json is bf16) or change {precision_key}")
    return ds


def offloads_optimizer(ds_config: dict) -> bool:
    return ds_config.get("zero_optimization", {}).get("offload_optimizer", {}).get("device", "none") in ("cpu", "nvme")


# ---------------------------------------------------------------------------- processes


def world_size_from_env() -> int:
    """The world size the launcher promises (torchrun/deepspeed: WORLD_SIZE; mpirun: PMI_SIZE or OMPI_COMM_WORLD_SIZE)."""
    for name in _WORLD_SIZE_ENV:
        if name in os.environ:
            return int(os.environ[name])
    return 1


def use_cpu_accelerator_if_no_gpu() -> None:
    import torch
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")


def use_venv_for_jit_builds() -> None:
    """JIT-built ops (DeepSpeed's CPU comm op) are built under the virtualenv, by the virtualenv's ninja.

    torch's default build folder, ~/.cache/torch_extensions, is shared by every checkout on the machine, and its
    build file names the venv's own paths: two checkouts used in turn rebuild the op each time (about a minute), and
    one rebuilding it rewrites the library under another that is running. torch runs whichever `ninja` is first on
    PATH, and ninja 1.11 (Debian's) and 1.13 (the venv's, a DeepSpeed dependency) hash a build command differently,
    so each finds the other's build out of date: a rank launched with the venv on PATH and one without rebuilt the op
    every time they alternated (three builds in one test suite).
    TORCH_EXTENSIONS_DIR, when set, wins. Outside a venv torch's defaults stay.
    """
    if sys.prefix == sys.base_prefix:
        return
    os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path(sys.prefix) / "torch_extensions"))
    bin_dir, path = Path(sys.executable).parent, os.environ.get("PATH", "")
    if (bin_dir / "ninja").exists() and path.split(os.pathsep)[0] != str(bin_dir):
        os.environ["PATH"] = f"{bin_dir}{os.pathsep}{path}"


def remove_stale_build_lock(now: float | None = None) -> list[Path]:
    """Removes a lock on DeepSpeed's CPU comm op older than STALE_LOCK_S, and says so; returns what it removed.

    torch takes that lock every time a process builds or loads the op. A process killed meanwhile leaves it behind,
    and every later launch then waits on it forever without a word. A build takes under a minute, so a lock older
    than 10 minutes is such a leftover.
    """
    from torch.utils.cpp_extension import get_default_build_root
    root = Path(os.environ.get("TORCH_EXTENSIONS_DIR") or get_default_build_root())
    now = time.time() if now is None else now
    removed = []
    for lock in [root / COMM_OP / "lock", *root.glob(f"*/{COMM_OP}/lock")]:
        try:
            if now - lock.stat().st_mtime > STALE_LOCK_S:
                lock.unlink()
                removed.append(lock)
                print(f"removed a stale build lock left by a killed process: {lock}", file=sys.stderr, flush=True)
        except FileNotFoundError:  # absent, or another rank removed it first
            pass
    return removed


def _prepare_to_load_comm_op() -> None:
    """What a process does before DeepSpeed builds or loads its CPU comm op. The order matters: the stale lock is
    looked for in the build folder use_venv_for_jit_builds chose."""
    use_cpu_accelerator_if_no_gpu()
    use_venv_for_jit_builds()
    remove_stale_build_lock()


def build_comm_op() -> None:
    """Builds (once per checkout, about 40 s) or loads DeepSpeed's CPU comm op: `make ops` runs this up front."""
    _prepare_to_load_comm_op()
    from deepspeed.accelerator import get_accelerator
    get_accelerator().create_op_builder("ShareMemCommBuilder").load()


def init_distributed() -> None:
    """Join the process group: NCCL on GPUs, gloo on CPU.

    Under torchrun or the deepspeed launcher the environment is complete. Under mpirun/srun we fill it in from
    MPI (DeepSpeed's own MPI discovery would advertise `hostname -I`'s first address even when every rank is on
    this machine): the address from apr_ds/cluster/net.py and a free port rank 0 reserves, so that two jobs on one
    machine never collide on a fixed default. Without any launcher this is a world of one, on 127.0.0.1.
    Rank 0 hosts the rendezvous store on that reserved socket, which listens on MASTER_ADDR only (a TCPStore
    torch starts itself listens on every interface); the other ranks join as torch always does.
    """
    _prepare_to_load_comm_op()  # joining the group loads the comm op
    # DeepSpeed calls collectives torch 2.13 renamed; the FutureWarning repeats on every step and says nothing to us.
    warnings.filterwarnings("ignore", message=r"`torch\.distributed\.\w+` is deprecated", category=FutureWarning)
    import deepspeed
    from deepspeed.accelerator import get_accelerator

    backend = "nccl" if get_accelerator().device_name() == "cuda" else "gloo"
    if not all(name in os.environ for name in _LAUNCHER_ENV):
        if world_size_from_env() > 1:  # an MPI world
            _export_env_from_mpi()
        else:
            _export_env_of_one()
    listener = claim_port(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]))
    if listener is not None:
        _host_default_group(listener, backend)
    deepspeed.init_distributed(dist_backend=backend)  # adopts the group hosted above, if any
    if backend == "nccl":
        get_accelerator().set_device(int(os.environ.get("LOCAL_RANK", "0")))


def _export_env_from_mpi() -> None:
    from mpi4py import MPI

    from apr_ds.cluster.net import agree_on_host_address
    from apr_ds.cluster.roles import export_torch_env
    export_torch_env(MPI.COMM_WORLD, agree_on_host_address(MPI.COMM_WORLD))


def _export_env_of_one() -> None:
    from apr_ds.cluster.net import LOOPBACK, keep_listeners_on
    keep_listeners_on(LOOPBACK)
    for name, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1"), ("MASTER_ADDR", LOOPBACK)):
        os.environ.setdefault(name, value)
    if "MASTER_PORT" not in os.environ:
        os.environ["MASTER_PORT"] = str(reserve_port(os.environ["MASTER_ADDR"]))


def _host_default_group(listener, backend: str) -> None:
    """Rank 0: torch's default group over a store listening on `listener`, with what DeepSpeed would pass.
    The store's keys carry the "default_pg" prefix torch's env:// rendezvous adds, so the other ranks meet it."""
    import torch
    import torch.distributed as dist
    from deepspeed.constants import default_pg_timeout
    from torch.distributed.distributed_c10d import PrefixStore

    world_size = int(os.environ["WORLD_SIZE"])
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size, is_master=True,
                          timeout=default_pg_timeout, master_listen_fd=listener.detach(), use_libuv=True)
    # DeepSpeed binds the device on GPUs when the group has peers; doing the same keeps rank 0 in step with them
    device = {"device_id": torch.device("cuda", int(os.environ["LOCAL_RANK"]))} if backend == "nccl" and world_size > 1 else {}
    dist.init_process_group(backend, store=PrefixStore("default_pg", store), rank=0, world_size=world_size,
                            timeout=default_pg_timeout, **device)


def close_distributed() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


# ---------------------------------------------------------------------------- optimizer, schedule, engine


def lr_at(step: int, optim: OptimConfig, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup from `warmup_start_lr` to `lr` over
    `warmup_steps`, then `constant` stays at `lr` and `cosine` decays to `min_lr` at `total_steps`
    (optax.warmup_cosine_decay_schedule, as the paper used)."""
    if step < optim.warmup_steps:
        return optim.warmup_start_lr + (optim.lr - optim.warmup_start_lr) * step / optim.warmup_steps
    if optim.schedule == "constant":
        return optim.lr
    decay_steps = max(1, total_steps - optim.warmup_steps)
    progress = min(1.0, (step - optim.warmup_steps) / decay_steps)
    return optim.min_lr + 0.5 * (optim.lr - optim.min_lr) * (1 + math.cos(math.pi * progress))


def param_groups(model, weight_decay: float) -> list[dict]:
    """Decay matrices (embeddings, projections); leave 1-D RMSNorm gains alone, as nanoGPT and most Llama recipes do."""
    decay = [p for p in model.parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.dim() < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model, optim: OptimConfig, ds_config: dict):
    """torch AdamW (nothing to compile); DeepSpeedCPUAdam when ZeRO offloads the optimizer to CPU (its JIT op builds once)."""
    import torch
    groups = param_groups(model, optim.weight_decay)
    betas = (optim.beta1, optim.beta2)
    if offloads_optimizer(ds_config):
        from deepspeed.ops.adam import DeepSpeedCPUAdam
        return DeepSpeedCPUAdam(groups, lr=optim.lr, betas=betas, adamw_mode=True)
    return torch.optim.AdamW(groups, lr=optim.lr, betas=betas)


def build_engine(model, optim: OptimConfig, total_steps: int, ds_config: dict):
    """deepspeed.initialize with our optimizer and LambdaLR schedule over `total_steps` optimizer steps;
    partitions the model (ZeRO-3)."""
    import deepspeed
    import torch

    optimizer = build_optimizer(model, optim, ds_config)

    def schedule(opt):  # called by DeepSpeed with the optimizer it will step; multiplier of the peak lr
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda step: lr_at(step, optim, total_steps) / optim.lr)

    engine, _, _, _ = deepspeed.initialize(model=model, optimizer=optimizer, lr_scheduler=schedule, config=ds_config)
    return engine
