"""A real one-node slurm (tools/slurm_local.sh) for the tests in this folder, and tiny data for its jobs.

The cluster is started once per session in a temporary state directory and stopped at the end: the tool
cancels its jobs and ends exactly the daemons it started, by PID. Without root or a reachable Debian mirror
(slurm-wlm and munge missing), every test here skips with the tool's reason.
"""

import subprocess
import sys

import pytest
from slurm_cluster import ENV, NO_SLURM, REPO, SLURM_LOCAL, Slurm


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("slurm")
    try:
        done = subprocess.run([str(SLURM_LOCAL), "start", str(state_dir)], capture_output=True, text=True, timeout=1200)
    except subprocess.TimeoutExpired:
        pytest.skip("tools/slurm_local.sh start did not finish in 20 min (apt?)")
    if done.returncode == NO_SLURM:
        pytest.skip(f"no slurm here: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'cannot install'}")
    if done.returncode != 0:
        subprocess.run([str(SLURM_LOCAL), "stop", str(state_dir)], capture_output=True, timeout=120)
        pytest.fail(f"tools/slurm_local.sh start failed:\n{done.stderr[-3000:]}")
    try:
        yield Slurm(state_dir)
    finally:
        subprocess.run([str(SLURM_LOCAL), "stop", str(state_dir)], capture_output=True, timeout=180)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory):
    """`apr-ds data --preset tiny`, small: every split the jobs read (train for SFT and RL, test for eval)."""
    root = tmp_path_factory.mktemp("slurmdata")
    done = subprocess.run([sys.executable, "-m", "apr_ds.cli", "data", "--preset", "tiny", f"run_dir={root}",
                           "data.workers=1", "task.num_train=150", "task.num_val=20", "task.num_test=10",
                           "task.num_test_unseen_targets=10"], cwd=REPO, env=ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return root / "data"
