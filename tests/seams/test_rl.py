"""`apr-ds rl` for real: 2 DeepSpeed ZeRO-3 learner ranks + 2 rollout ranks (each with its own server) in one MPI
world, started by the command itself under mpiexec. The SFT model is trained here on a 2-number Countdown, small
enough that a ~1M model solves some problems, so rewards vary and GRPO has a signal."""

import json
import os
import signal
import subprocess
import sys
import time

from launching import process_alive
from rl_fixtures import TAGS, read_scalars, rl_command, run_rl


def test_two_learners_two_rollout_ranks(sft_run):
    run_dir = sft_run("apr")
    proc = run_rl(run_dir, "rl.steps=4", "rl.max_staleness=1", "rl.checkpoint.save_every=2", "rl.keep_programs=3")
    assert proc.returncode == 0, proc.stderr[-4000:]
    _check_kept_programs(run_dir, quotas=[2, 1])
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert all(r["staleness/max"] <= 1 for r in rows)  # every trajectory within eta of the learner's version
    assert rows[-1]["weights/version"] == 4
    # after every sync the servers' weights equal the learner's (read back through /get_weights_by_name)
    assert rows[-1]["sync/checked_versions"] >= 2 and rows[-1]["sync/mismatched_versions"] == 0
    assert sum(r["rollout/reward"] for r in rows) > 0
    assert all(r["sync/bytes"] > 4e6 for r in rows)
    assert _policy_moved(run_dir)
    # TensorBoard, read back with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(run_dir / "rl" / "tb"))
    events.Reload()
    assert set(TAGS) <= set(events.Tags()["scalars"]), set(TAGS) - set(events.Tags()["scalars"])
    assert (run_dir / "rl" / "checkpoints" / "step_00000004" / "COMPLETE").is_file()
    assert not _servers_of(run_dir)  # every server stopped with its rank


def _check_kept_programs(run_dir, quotas):
    """rl.keep_programs=3 over two rollout ranks: 2 and 1 programs per weight version, one per group, each with its
    reward and version; `apr-ds view` reads the folder."""
    from collections import Counter
    for index, quota in enumerate(quotas):
        records = [json.loads(line) for line in (run_dir / "rl" / "programs" / f"rollout{index}.jsonl").read_text().splitlines()]
        assert records and max(Counter(r["version"] for r in records).values()) <= quota
        assert len({r["group"] for r in records}) == len(records)
        assert all(r["reward"] == float(r["correct"]) and r["rollout"] == index and r["threads"] for r in records)
    page = run_dir / "rl" / "programs.html"
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "view", str(run_dir / "rl"), "--out", str(page)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and page.stat().st_size > 0, proc.stderr[-2000:]


def test_a_reward_run_without_kl_trains_only_solved_programs_on_two_learners(sft_run):
    """A = R at beta 0: the learners run the solved programs' sequences only, balanced over two ranks, and still
    normalise by every sequence of each group with a solved program."""
    run_dir = sft_run("apr", name="reward")
    proc = run_rl(run_dir, "rl.steps=3", "rl.advantage=reward", "rl.beta=0", "rl.checkpoint.save_every=3", rollouts=1)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["learner/trained_sequences"] <= r["learner/sequences"] for r in rows)
    assert any(0 < r["learner/trained_sequences"] < r["learner/sequences"] for r in rows), rows
    assert _policy_moved(run_dir)
    assert not _servers_of(run_dir)


def _policy_moved(run_dir) -> bool:
    """The RL run's exported weights differ from the SFT model it started from (same tensors, other values)."""
    from safetensors.torch import load_file
    before = load_file(str(run_dir / "sft" / "apr" / "hf" / "model.safetensors"))
    after = load_file(str(run_dir / "rl" / "hf" / "model.safetensors"))
    assert before.keys() == after.keys(), set(before) ^ set(after)
    return any(not (before[k] == after[k]).all() for k in before)


def _servers_of(run_dir) -> list[int]:
    pids = [int(pid_file.read_text()) for pid_file in (run_dir / "rl").glob("server*.pid")]
    return [pid for pid in pids if process_alive(pid)]


def test_synchronous_mode_and_resume(sft_run):
    """eta = 0 runs on the same code path with no staleness; a second run resumes from the checkpoint.
    The overlong penalty is on, with a buffer of all but one token of the 256-token window, so every program
    loses reward for its length and the learner must log a shaped reward below the verifier's accuracy."""
    run_dir = sft_run("apr", name="sync")
    shaped = ["rl.overlong_buffer=255", "rl.overlong_penalty=0.5"]
    first = run_rl(run_dir, "rl.steps=2", "rl.max_staleness=0", "rl.checkpoint.save_every=1", *shaped, learners=1, rollouts=1)
    assert first.returncode == 0, first.stderr[-4000:]
    second = run_rl(run_dir, "rl.steps=3", "rl.max_staleness=0", "rl.checkpoint.save_every=1", *shaped, learners=1, rollouts=1)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr and "step_00000002" in second.stderr
    assert not (run_dir / "rl" / "programs").exists()  # rl.keep_programs is off by default: nothing is kept
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    assert all(r["staleness/max"] == 0 for r in rows)
    # with no staleness the learner scores each token under the very distribution the server sampled it from
    # (logits / T at T 0.5), so the two log-probs differ by float noise only (measured ~1e-7). A resumed rank that
    # sampled its first groups with the SFT weights logged 0.0047 on step 3; scoring at T 1 logged 0.13 at every step.
    assert all(r["loss/behaviour_mismatch"] < 1e-3 for r in rows), [r["loss/behaviour_mismatch"] for r in rows]
    assert rows[-1]["weights/version"] == 3
    # the rollout rank's shaped reward, not the bare verdict, is what reached the learner
    assert all(r["rollout/accuracy"] - 0.5 <= r["rollout/reward"] < r["rollout/accuracy"] for r in rows), rows


def _kill_after_first_checkpoint(run_dir, proc, victim, sig) -> None:
    checkpoint = run_dir / "rl" / "checkpoints" / "step_00000001" / "COMPLETE"
    deadline = time.time() + 600
    while time.time() < deadline and not checkpoint.is_file() and proc.poll() is None:
        time.sleep(0.5)
    assert checkpoint.is_file(), "no first checkpoint"
    os.kill(victim(), sig)


def _server_pid(run_dir, index=0) -> int:
    return int((run_dir / "rl" / f"server{index}.pid").read_text())


def _parent_of(pid: int) -> int:
    return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])


def _run_and_kill(run_dir, victim, *overrides, learners=1, rollouts=1, sig=signal.SIGKILL):
    """`victim(launcher_pid)` names the process to signal once the first checkpoint is complete."""
    cmd = rl_command(run_dir, *overrides, learners=learners, rollouts=rollouts)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _kill_after_first_checkpoint(run_dir, proc, lambda: victim(proc.pid), sig)
        _, stderr = proc.communicate(timeout=500)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stderr


def test_a_killed_server_is_restarted_resynced_and_the_run_goes_on(sft_run):
    """Rollout rank 0's server is SIGKILLed mid-run: the rank restarts it, the learner rebuilds the weight group
    with both servers and sends the current version, the cut-short groups run again, and training finishes."""
    run_dir = sft_run("apr", name="restart")
    first_server = []

    def victim(launcher_pid):
        first_server.append(_server_pid(run_dir))
        return first_server[0]
    code, stderr = _run_and_kill(run_dir, victim, "rl.steps=6", "rl.checkpoint.save_every=1", "rl.max_staleness=1", rollouts=2)
    assert code == 0, stderr[-4000:]
    assert "the inference server died (killed by signal 9); restarting it" in stderr
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5, 6]
    assert rows[-1]["faults/server_restarts"] == 1
    # the restarted server was re-synced: its weights read back equal the learner's at every checked version
    assert rows[-1]["sync/mismatched_versions"] == 0 and rows[-1]["sync/checked_versions"] >= 4
    assert _server_pid(run_dir) != first_server[0]  # a new process, stopped at the end like the others
    assert not _servers_of(run_dir)
    # nothing trained on twice: every (rollout rank, group index) appears in one step at most
    trained = [tuple(g[:2]) for line in (run_dir / "rl" / "groups.jsonl").read_text().splitlines()
               for g in json.loads(line)["groups"]]
    assert len(trained) == 6 * 4 and len(set(trained)) == len(trained)
    assert {rank for rank, _ in trained} == {0, 1}


def test_a_dying_rollout_rank_ends_the_job_with_a_message_and_resume_works(sft_run):
    run_dir = sft_run("apr", name="fault")
    code, stderr = _run_and_kill(run_dir, lambda launcher: _parent_of(_server_pid(run_dir)), "rl.steps=40", "rl.checkpoint.save_every=1")
    assert code != 0
    assert "apr-ds rl: the job failed" in stderr and "resume from the newest checkpoint" in stderr, stderr[-3000:]
    deadline = time.time() + 30  # the orphaned server got SIGTERM when its rank died (PR_SET_PDEATHSIG)
    while _servers_of(run_dir) and time.time() < deadline:
        time.sleep(0.5)
    assert not _servers_of(run_dir)
    resumed = run_rl(run_dir, "rl.steps=3", "rl.checkpoint.save_every=1", learners=1, rollouts=1)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "resumed from" in resumed.stderr
    assert read_scalars(run_dir)[-1]["step"] == 3


def _processes_of(run_dir) -> list[int]:
    """Live processes started for this run: ranks (their command line names the run) and servers (pid files)."""
    ranks = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and f"run_dir={run_dir}" in open(f"/proc/{entry}/cmdline").read().replace("\0", " "):
                ranks.append(int(entry))
        except OSError:
            pass
    return [pid for pid in ranks if process_alive(pid)] + _servers_of(run_dir)


def test_sigterm_to_the_launcher_stops_every_rank_and_server(sft_run):
    """`kill PID` of `apr-ds rl` (what a user or a batch system sends) ends the whole job, not only the launcher."""
    run_dir = sft_run("apr", name="sigterm")
    try:
        code, stderr = _run_and_kill(run_dir, lambda launcher: launcher, "rl.steps=40", "rl.checkpoint.save_every=1", sig=signal.SIGTERM)
        assert code == 130 and "apr-ds rl: stopped; run the same command again to resume" in stderr, stderr[-3000:]
        deadline = time.time() + 30
        while _processes_of(run_dir) and time.time() < deadline:
            time.sleep(0.5)
        assert not _processes_of(run_dir)
    finally:  # what this test started, if the launcher left it behind
        for pid in _processes_of(run_dir):
            os.kill(pid, signal.SIGKILL)


def test_bad_inputs_stop_before_any_rank_starts(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "rl", "--preset", "tiny", f"run_dir={tmp_path}"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "no SFT model at" in proc.stderr and "Traceback" not in proc.stderr


def test_a_world_of_the_wrong_size_says_so(sft_run):
    run_dir = sft_run("apr")
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    proc = subprocess.run([mpiexec, "-n", "3", sys.executable, "-m", "apr_ds.cli", "rl", "--preset", "tiny",
                           f"run_dir={run_dir}", "rl.learner_ranks=2", "rl.rollout_ranks=2"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    # every rank finds the mismatch and leaves without MPI_Abort, so the message cannot be lost; rank 0 says it once
    assert proc.stderr.count("the MPI world has 3 ranks but rl.learner_ranks + rl.rollout_ranks = 2 + 2") == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "Abort" not in proc.stderr
