"""`deepspeed --hostfile H --launcher slurm|mpich|openmpi` starting `apr-ds sft` on one node, 2 ZeRO-3 ranks,
and `apr-ds rl` (1 learner + 1 rollout rank) under the openmpi runner.

The commands are the ones docs/scaling.md gives. Each launch runs in its own process group, killed by its
id when the test is done with it. slurm: the session's one-node cluster (srun makes its own allocation);
mpich: the venv's mpirun (pip `mpich`); openmpi: Debian's openmpi-bin, installed by tools/apt_install.sh
(skipped where it cannot be installed).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from launching import launch as _launch
from slurm_cluster import BIN, ENV, REPO, new_run

from apr_ds.cluster.ports import free_port

pytestmark = pytest.mark.slow

SFT = ["sft", "--preset", "tiny", "sft.steps=2", "sft.optim.warmup_steps=1", "sft.checkpoint.save_every=2", "sft.eval_every=2",
       "sft.eval_sequences=8", "sft.probe_problems=1"]
# RL from the SoS+ model the SFT run wrote: 1 learner + 1 rollout rank (the hostfile's 2 slots), 2 steps.
RL = ["rl", "--preset", "tiny", "rl.method=sosp", "rl.learner_ranks=1", "rl.rollout_ranks=1", "rl.steps=2",
      "rl.prompts_per_step=2", "rl.group_size=2", "rl.checkpoint.save_every=1", "rl.deepspeed.micro_batch=2", "rollout.max_context=256",
      "rl.timeout_s=120"]


def launch(cmd, env, timeout=600):
    return _launch(cmd, env, REPO, timeout)


def deepspeed(hostfile, launcher, run_dir, *launcher_args, command=SFT):
    # The entry script's path, not --module: the mpich runner puts `-m` before its helper's path and the slurm
    # runner ignores --module (deepspeed 0.19.8).
    return [BIN / "deepspeed", "--hostfile", hostfile, "--launcher", launcher, *launcher_args, "--force_multi",
            "--no_ssh_check", "--master_addr", "127.0.0.1", "--master_port", free_port("0.0.0.0"), BIN / "apr-ds", *command,
            f"run_dir={run_dir}"]


def check_two_rank_run(code, out, run_dir):
    assert code == 0, out[-4000:]
    assert "sft sosp: 2 ranks" in out
    final = run_dir / "sft" / "sosp" / "checkpoints" / "step_00000002"
    assert (final / "COMPLETE").exists()
    assert len(list(final.glob("zero_pp_rank_*_mp_rank_00_model_states.pt"))) == 2
    assert (run_dir / "sft" / "sosp" / "hf" / "config.json").exists()


def test_deepspeed_launcher_slurm(slurm, tiny_data, tmp_path_factory):
    run_dir = new_run(tmp_path_factory, "ds_slurm", tiny_data)
    node = (slurm.state_dir / "node").read_text().strip()
    hostfile = run_dir / "hostfile"
    hostfile.write_text(f"{node} slots=2\n")
    env = {**slurm.env, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    code, out = launch(deepspeed(hostfile, "slurm", run_dir, "--launcher_args", "--mpi=pmi2 --kill-on-bad-exit=1"), env)
    assert "cmd = srun -n 2 --mpi=pmi2" in out
    check_two_rank_run(code, out, run_dir)


def test_deepspeed_launcher_mpich(tiny_data, tmp_path_factory):
    if not (BIN / "mpirun").exists():
        pytest.skip("needs the venv's mpirun (pip install mpich)")
    run_dir = new_run(tmp_path_factory, "ds_mpich", tiny_data)
    hostfile = run_dir / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    env = {**ENV, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # the runner calls `mpirun` from PATH
    code, out = launch(deepspeed(hostfile, "mpich", run_dir), env)
    assert "cmd = mpirun -n 2 -ppn 2" in out
    check_two_rank_run(code, out, run_dir)


def test_deepspeed_launcher_openmpi_sft_then_rl(tiny_data, tmp_path_factory):
    if not shutil.which("ompi_info"):
        done = subprocess.run([str(REPO / "tools" / "apt_install.sh"), "openmpi-bin"], capture_output=True, text=True,
                              timeout=1200)
        if done.returncode == 3:
            pytest.skip(f"Open MPI not installable here: {done.stderr.strip()[-300:]}")
        assert done.returncode == 0, done.stderr[-2000:]
    run_dir = new_run(tmp_path_factory, "ds_openmpi", tiny_data)
    hostfile = run_dir / "hostfile"
    hostfile.write_text("localhost slots=2\n")
    # Open MPI's mpirun must come first on PATH (the venv's is MPICH's), and mpi4py must load Open MPI's libmpi:
    # with the pip mpich wheel in the venv it would pick that one (MPI_Init: "unsupported PMI version PMIx").
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p and os.path.realpath(p) != os.path.realpath(BIN))
    env = {**ENV, "PATH": path, "MPI4PY_MPIABI": "openmpi"}
    if os.geteuid() == 0:
        env |= {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    # DeepSpeed's default --mca btl_tcp_if_include eth0 names an interface a machine may not have.
    code, out = launch(deepspeed(hostfile, "openmpi", run_dir, "--launcher_args", "--mca btl_tcp_if_include lo"), env)
    assert "cmd = mpirun -n 2 -hostfile" in out
    check_two_rank_run(code, out, run_dir)
    # RL: ranks 0 and 1 become learner and rollout rank; Open MPI fails a rank that exits without MPI_Finalize.
    code, out = launch(deepspeed(hostfile, "openmpi", run_dir, "--launcher_args", "--mca btl_tcp_if_include lo",
                                 command=RL), env)
    assert code == 0, out[-4000:]
    assert (run_dir / "rl" / "checkpoints" / "step_00000002" / "COMPLETE").exists()
    assert (run_dir / "rl" / "hf" / "config.json").exists()
