"""slurm/*.sbatch on a real one-node slurm (tools/slurm_local.sh), submitted with sbatch as a user would.

- sft.sbatch: 2 ZeRO-3 ranks in one srun MPI world (pmi2). Requeued by slurm after its first checkpoint, the
  second attempt resumes from it (--requeue + --resume auto); the job ends COMPLETED with TensorBoard events,
  the final checkpoint, the HF export and one log folder per attempt.
- eval.sbatch: after the SFT job (--dependency=afterok), evaluates its model; COMPLETED with results.
- train.sbatch: RL, 1 learner + 1 rollout rank; COMPLETED with TensorBoard events and a checkpoint.
- failures: a config error on every rank, and a rank killed mid-training, each end the job FAILED with the
  exit code in slurm's record and the cause in our log, instead of hanging.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from slurm_cluster import REPO, new_run

pytestmark = pytest.mark.slow

SFT_STEPS = 30
SFT_ARGS = ["--preset", "tiny", "sft.method=apr", f"sft.steps={SFT_STEPS}", "sft.optim.warmup_steps=2", "sft.log_every=1",
            "sft.checkpoint.save_every=2", "sft.checkpoint.keep_last=2", f"sft.eval_every={SFT_STEPS}", "sft.eval_sequences=16",
            "sft.probe_problems=2"]


def attempt_dir(log_root: Path, name: str, job_id: str, attempt: int) -> Path:
    return log_root / f"{name}-{job_id}" / f"attempt-{attempt}"


def read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for(predicate, what: str, job_id: str, slurm, limit_s: float = 600):
    """Poll `predicate` while the job runs; fail (not hang) if the job ends first or the bound passes."""
    deadline = time.monotonic() + limit_s
    while not predicate():
        job = slurm.job(job_id)
        if job["JobState"] not in ("PENDING", "RUNNING", "CONFIGURING"):
            pytest.fail(f"job {job_id} ended ({job['JobState']}) before {what}")
        if time.monotonic() > deadline:
            pytest.fail(f"job {job_id}: no {what} after {limit_s:.0f} s")
        time.sleep(0.2)


def job_pids(job_id: str, procid: int) -> list[int]:
    """PIDs of apr-ds processes of this job's task `procid` (read from /proc: this machine is the node)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            env = dict(item.partition("=")[::2] for item in (entry / "environ").read_text(errors="replace").split("\0"))
            cmdline = (entry / "cmdline").read_text(errors="replace")
        except OSError:
            continue
        if env.get("SLURM_JOB_ID") == job_id and env.get("SLURM_PROCID") == str(procid) and "apr_ds.cli" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


@pytest.fixture(scope="module")
def sft_job(slurm, tiny_data, tmp_path_factory):
    """sft.sbatch, requeued once after its first complete checkpoint; then eval.sbatch after it."""
    run_dir = new_run(tmp_path_factory, "slurm_sft", tiny_data)
    work = run_dir.parent / f"{run_dir.name}_submit"
    work.mkdir()
    env = {"APR_LOG_ROOT": str(work / "logs")}
    job_id = slurm.submit("sft.sbatch", *SFT_ARGS, f"run_dir={run_dir}", cwd=work, env=env)
    eval_id = slurm.submit("eval.sbatch", "--preset", "tiny", f"run_dir={run_dir}", "--model", run_dir / "sft/apr/hf",
                           "--method", "apr", "eval.num_problems=3", "rollout.max_context=256", cwd=work, env=env,
                           sbatch_args=[f"--dependency=afterok:{job_id}"])
    first = run_dir / "sft" / "apr" / "checkpoints" / "step_00000002" / "COMPLETE"
    wait_for(first.exists, "a first complete checkpoint", job_id, slurm)
    slurm.cmd("scontrol", "requeue", job_id)  # what a preemption or node failure does to a --requeue job
    job = slurm.wait(job_id, until={"PENDING"}, check=lambda job: job.get("Restarts") == "1" and job["JobState"] == "RUNNING")
    if job["JobState"] == "PENDING":
        # Skip the requeue hold-off, but not within the second of the requeue: slurm revokes the job's credentials
        # as of that second, and a start in the same second fails with "Job credential revoked".
        time.sleep(2)
        slurm.cmd("scontrol", "update", f"JobId={job_id}", "StartTime=now", check=False)
    job = slurm.wait(job_id)
    eval_job = slurm.wait(eval_id)
    return run_dir, work, job_id, job, eval_id, eval_job


def test_sft_sbatch_completes_after_a_requeue(sft_job, slurm):
    run_dir, work, job_id, job, _, _ = sft_job
    out = read(work / f"slurm-apr-sft-{job_id}.out")
    assert job["JobState"] == "COMPLETED", out[-3000:]
    assert job["ExitCode"] == "0:0" and job["Restarts"] == "1"
    assert slurm.jobcomp(job_id)["JobState"] == "COMPLETED"
    first = read(attempt_dir(work / "logs", "apr-sft", job_id, 0) / "sft.log")
    second = read(attempt_dir(work / "logs", "apr-sft", job_id, 1) / "sft.log")
    assert "0: " in first and "1: " in first  # both ranks of one srun step, labelled
    assert "resumed from" not in first
    resumed = [line for line in second.splitlines() if "resumed from" in line]
    assert resumed and "step_000000" in resumed[0], second[-3000:]
    assert "DUE TO JOB REQUEUE" in out and "attempt 1" in out  # both attempts appended to one output file
    assert (attempt_dir(work / "logs", "apr-sft", job_id, 1) / "exit_code").read_text().strip() == "0"


def test_sft_sbatch_writes_tensorboard_checkpoint_and_model(sft_job):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run_dir = sft_job[0]
    out = run_dir / "sft" / "apr"
    final = out / "checkpoints" / f"step_{SFT_STEPS:08d}"
    assert (final / "COMPLETE").exists()
    assert sorted(p.name for p in final.glob("zero_pp_rank_*_model_states.pt")) == [
        "zero_pp_rank_0_mp_rank_00_model_states.pt", "zero_pp_rank_1_mp_rank_00_model_states.pt"]
    assert (out / "hf" / "config.json").exists()
    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    steps = {e.step for e in events.Scalars("train/loss")}
    assert steps == set(range(1, SFT_STEPS + 1))  # resumed, every step logged once across the two attempts


def test_eval_sbatch_runs_after_sft(sft_job):
    run_dir, work, _, _, eval_id, eval_job = sft_job
    out = read(work / f"slurm-apr-eval-{eval_id}.out")
    assert eval_job["JobState"] == "COMPLETED" and eval_job["ExitCode"] == "0:0", out[-3000:]
    assert (run_dir / "eval" / "apr.json").exists()
    assert "results:" in read(attempt_dir(work / "logs", "apr-eval", eval_id, 0) / "eval.log")


def test_a_config_error_fails_the_job_with_its_message(slurm, tiny_data, tmp_path_factory):
    run_dir = new_run(tmp_path_factory, "slurm_bad", tiny_data)
    work = run_dir / "submit"
    work.mkdir()
    job_id = slurm.submit("sft.sbatch", "--preset", "tiny", f"run_dir={run_dir}", "sft.deepspeed.precision=fp16", cwd=work,
                          env={"APR_LOG_ROOT": str(work / "logs")})
    job = slurm.wait(job_id)
    assert job["JobState"] == "FAILED" and job["ExitCode"] == "2:0", job
    assert slurm.jobcomp(job_id)["JobState"] == "FAILED"
    # refused while the config loads in the batch script (slurm/plan.py): no srun step, no rank ever starts
    out = read(work / f"slurm-apr-sft-{job_id}.out")
    assert "apr-ds sft: error: sft.deepspeed.precision must be fp32 or bf16, got 'fp16'" in out, out[-3000:]
    assert "plan.py failed" in out and "Traceback" not in out and "srun exit code" not in out
    assert not (attempt_dir(work / "logs", "apr-sft", job_id, 0) / "sft.log").exists()


def test_a_dead_rank_ends_the_job_instead_of_hanging(slurm, tiny_data, tmp_path_factory):
    run_dir = new_run(tmp_path_factory, "slurm_kill", tiny_data)
    work = run_dir / "submit"
    work.mkdir()
    logs = work / "logs"
    job_id = slurm.submit("sft.sbatch", "--preset", "tiny", f"run_dir={run_dir}", "sft.steps=100000",
                          "sft.checkpoint.save_every=100000", "sft.eval_every=100000", "sft.log_every=1", cwd=work,
                          env={"APR_LOG_ROOT": str(logs)})
    log_path = attempt_dir(logs, "apr-sft", job_id, 0) / "sft.log"
    wait_for(lambda: "loss=" in read(log_path), "training steps", job_id, slurm)
    victims = job_pids(job_id, procid=1)
    assert victims, "rank 1 of the job not found"
    os.kill(victims[0], signal.SIGKILL)  # the rank dies as on an OOM kill or a segfault
    job = slurm.wait(job_id)
    assert job["JobState"] == "FAILED" and job["ExitCode"] != "0:0", job
    log = read(log_path)
    assert "task 1" in log and "Killed" in log, log[-3000:]  # srun names the dead rank
    assert "step sft FAILED: srun exit code" in read(work / f"slurm-apr-sft-{job_id}.out")
    assert not job_pids(job_id, procid=0)  # the surviving rank is gone too


def rl_available() -> bool:
    from apr_ds.cli import COMMANDS
    return "rl" in COMMANDS and (REPO / "apr_ds" / "learner" / "rl.py").exists()


@pytest.mark.skipif(not rl_available(), reason="apr-ds rl not implemented yet")
def test_train_sbatch_completes_with_tensorboard_and_checkpoint(slurm, sft_job, tiny_data, tmp_path_factory):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    sft_run = sft_job[0]
    run_dir = new_run(tmp_path_factory, "slurm_rl", tiny_data)
    work = run_dir / "submit"
    work.mkdir()
    steps = 2
    # --time: slurm itself ends a hung job (state TIMEOUT) long before the test's own bound. (A rollout rank once
    # hung at shutdown waiting on trajectory sends nobody received; apr_ds/launch.py finish() drains them.)
    job_id = slurm.submit("train.sbatch", "--preset", "tiny", f"run_dir={run_dir}", f"rl.init_model={sft_run}/sft/apr/hf",
                          "rl.learner_ranks=1", "rl.rollout_ranks=1", f"rl.steps={steps}", "rl.prompts_per_step=2",
                          "rl.group_size=2", "rl.checkpoint.save_every=1", "rl.deepspeed.micro_batch=2", "rollout.max_context=256",
                          "rl.timeout_s=120", cwd=work, env={"APR_LOG_ROOT": str(work / "logs")}, sbatch_args=["--time=3"])
    job = slurm.wait(job_id)
    out = read(work / f"slurm-apr-rl-{job_id}.out")
    assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", out[-4000:]
    assert slurm.jobcomp(job_id)["JobState"] == "COMPLETED"
    ranks = read(attempt_dir(work / "logs", "apr-rl", job_id, 0) / "ranks.tsv").splitlines()
    assert [line.split("\t")[2] for line in ranks] == ["learner", "rollout"]
    rl = run_dir / "rl"
    events = EventAccumulator(str(rl / "tb"))
    events.Reload()
    assert [e.step for e in events.Scalars("rollout/reward")] == list(range(1, steps + 1))
    final = rl / "checkpoints" / f"step_{steps:08d}"
    assert (final / "COMPLETE").exists(), f"no complete final checkpoint in {rl / 'checkpoints'}"
    assert (rl / "hf" / "config.json").exists()
