"""slurm/task.sh: a rollout rank's GPUs are plan.py's positions looked up in the list slurm gave the task, never
device indices counted from 0; and a rank srun placed elsewhere than planned stops (no slurm needed)."""

import subprocess

import pytest
from slurm_cluster import REPO

TASK_SH = REPO / "slurm" / "task.sh"
RANKS = "0\tg1\tlearner\t-\n1\tg1\trollout\t0,1\n2\tg1\trollout\t2,3\n"


@pytest.fixture
def ranks_tsv(tmp_path):
    path = tmp_path / "ranks.tsv"
    path.write_text(RANKS)
    return path


def run_task(ranks_tsv, rank, **env):
    """task.sh for `rank` on node g1 with `env` as its only slurm/CUDA environment, running `env`: (code, vars, err)."""
    base = {"PATH": "/usr/bin:/bin", "SLURM_PROCID": str(rank), "SLURMD_NODENAME": "g1"}
    done = subprocess.run(["bash", str(TASK_SH), str(ranks_tsv), "env"], env={**base, **env}, capture_output=True,
                          text=True, timeout=30)
    variables = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    return done.returncode, variables, done.stderr


def test_positions_index_the_cuda_visible_devices_slurm_gave(ranks_tsv):
    code, variables, err = run_task(ranks_tsv, 1, CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert code == 0, err
    assert variables["CUDA_VISIBLE_DEVICES"] == "4,5"
    assert variables["APR_ROLE"] == "rollout"
    code, variables, err = run_task(ranks_tsv, 2, CUDA_VISIBLE_DEVICES="GPU-a,GPU-b,GPU-c,GPU-d")
    assert (code, variables["CUDA_VISIBLE_DEVICES"]) == (0, "GPU-c,GPU-d"), err


def test_slurms_gpu_lists_stand_in_when_cuda_visible_devices_is_unset(ranks_tsv):
    step_and_job = run_task(ranks_tsv, 2, SLURM_STEP_GPUS="1,3,5,7", SLURM_JOB_GPUS="0,1,2,3")
    assert step_and_job[1]["CUDA_VISIBLE_DEVICES"] == "5,7"  # the step's list before the job's
    assert run_task(ranks_tsv, 2, SLURM_JOB_GPUS="0,2,4,6")[1]["CUDA_VISIBLE_DEVICES"] == "4,6"
    assert run_task(ranks_tsv, 2)[1]["CUDA_VISIBLE_DEVICES"] == "2,3"  # no list: the whole node, positions = indices


def test_a_learner_keeps_the_whole_list(ranks_tsv):
    code, variables, err = run_task(ranks_tsv, 0, CUDA_VISIBLE_DEVICES="4,5,6,7")
    assert (code, variables["CUDA_VISIBLE_DEVICES"], variables["APR_ROLE"]) == (0, "4,5,6,7", "learner"), err


def test_a_task_that_sees_fewer_gpus_than_planned_stops(ranks_tsv):
    # per-task GPU binding (--gpus-per-task) leaves each task one GPU: positions 2,3 are not there
    code, variables, err = run_task(ranks_tsv, 2, CUDA_VISIBLE_DEVICES="6")
    assert code == 1 and "CUDA_VISIBLE_DEVICES" not in variables
    assert "planned on GPU positions 2,3" in err and "sees 1 GPU(s) (CUDA_VISIBLE_DEVICES=6)" in err


def test_the_placement_checks_still_hold(ranks_tsv):
    code, _, err = run_task(ranks_tsv, 1, SLURMD_NODENAME="g2")
    assert code == 1 and "runs on g2 but was planned on g1" in err
    code, _, err = run_task(ranks_tsv, 3)
    assert code == 1 and "rank 3 is not in" in err
