"""Helpers for the slurm tests: submit a job with sbatch, read its record, wait for it (bounded)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
SLURM_LOCAL = REPO / "tools" / "slurm_local.sh"
NO_SLURM = 3  # tools/slurm_local.sh: slurm cannot be installed here
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE",
            "PREEMPTED"}
# Upper bound on waiting for one job. Not a performance check: a job still running after this is a hang.
JOB_LIMIT_S = 900

ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1",
       "PYTHONWARNINGS": "ignore::FutureWarning", "DS_ACCELERATOR": "cpu"}


class Slurm:
    def __init__(self, state_dir: Path):
        self.state_dir = state_dir
        self.env = {**ENV, "SLURM_CONF": str(state_dir / "slurm.conf")}

    def cmd(self, *args, timeout=60, check=True) -> str:
        done = subprocess.run([str(a) for a in args], env=self.env, capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0 or not check, f"{' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}"
        return done.stdout

    def submit(self, script: str, *args, cwd: Path, sbatch_args=(), env: dict | None = None) -> str:
        """sbatch slurm/<script> args...; returns the job id. The job's environment is this one plus `env`."""
        done = subprocess.run(["sbatch", "--parsable", *sbatch_args, str(REPO / "slurm" / script), *map(str, args)],
                              cwd=cwd, env={**self.env, **(env or {})}, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, f"sbatch {script} failed: {done.stderr}"
        return done.stdout.strip().split(";")[0]

    def job(self, job_id: str) -> dict:
        """The job record (`scontrol show job -o`): JobState, ExitCode, Restarts, ..."""
        fields = {}
        for token in self.cmd("scontrol", "show", "job", "-o", job_id).split():
            key, sep, value = token.partition("=")
            if sep and key not in fields:
                fields[key] = value
        return fields

    def wait(self, job_id: str, until=TERMINAL, limit_s: float = JOB_LIMIT_S, check=None) -> dict:
        """Poll until the job's state is in `until` (or `check(job)` is true). Past limit_s the job is a hang:
        it is cancelled and the test fails with its record."""
        deadline = time.monotonic() + limit_s
        while True:
            job = self.job(job_id)
            if job["JobState"] in until or (check is not None and check(job)):
                return job
            if time.monotonic() > deadline:
                self.cmd("scancel", job_id)
                pytest.fail(f"job {job_id} still {job['JobState']} after {limit_s:.0f} s (a hang): {job}")
            time.sleep(0.5)

    def jobcomp(self, job_id: str) -> dict:
        """slurm's own completion record of the job (jobcomp/filetxt), last attempt."""
        lines = [line for line in (self.state_dir / "jobcomp.txt").read_text().splitlines()
                 if line.startswith(f"JobId={job_id} ")]
        assert lines, f"job {job_id} has no completion record"
        return dict(token.partition("=")[::2] for token in lines[-1].split() if "=" in token)


def new_run(tmp_path_factory, name: str, data_dir: Path) -> Path:
    run_dir = tmp_path_factory.mktemp(name)
    (run_dir / "data").symlink_to(data_dir)
    return run_dir
