"""One MPI world, split by role: ranks 0..L-1 are learners, the rest rollout ranks.

The world comes from whatever started us: `mpiexec`/`mpirun`, `srun` (PMI/PMIx), or
`deepspeed --launcher openmpi|mpich|slurm`. Learners then build their own torch.distributed group
among themselves: `export_learner_env` shares MASTER_ADDR/MASTER_PORT over MPI and sets RANK,
WORLD_SIZE and LOCAL_RANK from the learner sub-communicator, so DeepSpeed never sees the rollout ranks.
Every rank listens on `Roles.host_address` only: 127.0.0.1 when all ranks share this machine (apr_ds/cluster/net.py).
"""

from __future__ import annotations

import os
import shutil
import sys
from dataclasses import dataclass

from apr_ds.cluster.net import agree_on_host_address, loopback_mpi_env
from apr_ds.cluster.ports import reserve_port
from apr_ds.errors import UserError

# Set by the MPI process managers we know (MPICH/hydra, Open MPI, PMIx, slurm's PMI2).
_MPI_ENV = ("PMI_RANK", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "MPI_LOCALRANKID")


def in_mpi_world() -> bool:
    return any(name in os.environ for name in _MPI_ENV)


def mpiexec_command(num_ranks: int, argv: list[str]) -> list[str]:
    """Re-launch this command under the mpiexec that belongs to our mpi4py (the venv's own, if any)."""
    bin_dir = os.path.dirname(sys.executable)
    local = os.path.join(bin_dir, "mpiexec")
    mpiexec = local if os.path.exists(local) else shutil.which("mpiexec") or shutil.which("mpirun")
    if mpiexec is None:
        raise UserError("no mpiexec found: install an MPI (`pip install mpich`, or your cluster's module) or start the "
                        "job under srun / mpirun yourself")
    options = []
    if mpiexec == local and os.path.exists(os.path.join(bin_dir, "hydra_pmi_proxy")):  # the venv's MPICH
        for name, value in loopback_mpi_env().items():
            options += ["-genv", name, value]
    return [mpiexec, *options, "-n", str(num_ranks), sys.executable, "-m", "apr_ds.cli", *argv]


@dataclass
class Roles:
    world: object
    """MPI.COMM_WORLD."""
    rank: int
    size: int
    num_learners: int
    num_rollouts: int
    role_comm: object
    """Learners among themselves, or rollout ranks among themselves."""
    host_address: str
    """What this rank listens on and advertises (apr_ds.cluster.net.agree_on_host_address)."""
    node_ranks: list[tuple[int, str]]
    """(world rank, "learner" or "rollout") of every rank on this node: the input of the GPU placement plan."""

    @property
    def is_learner(self) -> bool:
        return self.rank < self.num_learners

    @property
    def learner_rank(self) -> int:
        return self.rank if self.is_learner else -1

    @property
    def rollout_index(self) -> int:
        return self.rank - self.num_learners if not self.is_learner else -1

    def rollout_world_rank(self, index: int) -> int:
        return self.num_learners + index


def assign_roles(num_learners: int, num_rollouts: int) -> Roles:
    from mpi4py import MPI
    world = MPI.COMM_WORLD
    rank, size = world.Get_rank(), world.Get_size()
    if num_learners < 1 or num_rollouts < 1:
        raise UserError(f"need at least one learner and one rollout rank, got rl.learner_ranks={num_learners}, "
                        f"rl.rollout_ranks={num_rollouts}")
    if size != num_learners + num_rollouts:
        raise UserError(f"the MPI world has {size} ranks but rl.learner_ranks + rl.rollout_ranks = {num_learners} + "
                        f"{num_rollouts}; start {num_learners + num_rollouts} ranks or change the config")
    role_comm = world.Split(0 if rank < num_learners else 1, rank)
    # here, before any rank starts a server or joins a group: they inherit what it sets for gloo and NCCL
    host_address = agree_on_host_address(world)
    node = world.Split_type(MPI.COMM_TYPE_SHARED, key=rank)
    node_ranks = [(r, "learner" if r < num_learners else "rollout") for r in node.allgather(rank)]
    node.Free()
    return Roles(world, rank, size, num_learners, num_rollouts, role_comm, host_address, node_ranks)


def export_learner_env(roles: Roles) -> None:
    """torch.distributed's environment for the learner group, agreed over MPI."""
    export_torch_env(roles.role_comm, roles.host_address)


def export_torch_env(comm, host_address: str) -> None:
    """RANK, WORLD_SIZE, LOCAL_RANK and MASTER_ADDR/MASTER_PORT for a torch group of `comm`'s ranks. Rank 0 reserves
    the port: it listens there (on its `host_address` only) until init_distributed hosts the store on that socket."""
    from mpi4py import MPI
    address = (host_address, reserve_port(host_address)) if comm.Get_rank() == 0 else None
    host, port = comm.bcast(address, root=0)
    node_comm = comm.Split_type(MPI.COMM_TYPE_SHARED, key=comm.Get_rank())
    os.environ.update(RANK=str(comm.Get_rank()), WORLD_SIZE=str(comm.Get_size()), LOCAL_RANK=str(node_comm.Get_rank()),
                      LOCAL_WORLD_SIZE=str(node_comm.Get_size()), MASTER_ADDR=host, MASTER_PORT=str(port))
    node_comm.Free()
