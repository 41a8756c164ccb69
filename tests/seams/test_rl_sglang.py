"""`apr-ds rl` with real SGLang rollout servers (its CPU engine, from `make sglang`): the same seams as
test_rl.py asserts on our server — weight sync through SGLang's own updater and its begin/end session, pause,
flush and continue, the read-back probe, resume, and a killed server restarted and re-synced — and afterwards no
process of any SGLang server (launcher, scheduler, detokenizer) is left."""

import json
import signal

from launching import process_alive
from rl_fixtures import read_scalars, rl_command, run_rl
from servers import sglang_python
from test_rl import _run_and_kill, _server_pid

from apr_ds.rollout.server_proc import group_members


def _sglang(*overrides):
    # SGLang starts in about half a minute per server on 2 cores; the learners wait that long in the first
    # rendezvous, so the collective timeout allows for it
    return ["rl.server=sglang", f"rl.sglang_python={sglang_python()}", "rl.timeout_s=400", *overrides]


def _sglang_left(run_dir) -> list[int]:
    """Live processes of every server this run started: each server is the leader of its own process group."""
    pids = [int(pid_file.read_text()) for pid_file in (run_dir / "rl").glob("server*.pid")]
    return [pid for pid in pids if process_alive(pid)] + [p for pid in pids for p in group_members(pid)]


def _sync_ms(rows) -> list[float]:
    return [r["sync/ms"] for r in rows]


def test_two_learners_two_sglang_servers(sft_run):
    run_dir = sft_run("apr", name="sglang")
    proc = run_rl(run_dir, *_sglang("rl.steps=3", "rl.max_staleness=1", "rl.checkpoint.save_every=3"))
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3]
    # every version went through SGLang's updater and read back equal to what the learner broadcast
    assert rows[-1]["sync/checked_versions"] >= 2 and rows[-1]["sync/mismatched_versions"] == 0
    assert all(r["staleness/max"] <= 1 for r in rows) and sum(r["rollout/reward"] for r in rows) > 0
    log = (run_dir / "rl" / "server0.log").read_text()
    assert "sglang" in log.lower() and "/begin_weight_update" in log and "/end_weight_update" in log
    print(f"sync ms on SGLang: {_sync_ms(rows)}")
    assert not _sglang_left(run_dir)


def test_synchronous_mode_and_resume_on_sglang(sft_run):
    """The resumed run's server starts from the SFT weights; it must be brought to the checkpoint's version before
    it samples, so the learner scores every token under the weights that sampled it."""
    run_dir = sft_run("apr", name="sglang_sync")
    first = run_rl(run_dir, *_sglang("rl.steps=2", "rl.max_staleness=0", "rl.checkpoint.save_every=1"), learners=1, rollouts=1)
    assert first.returncode == 0, first.stderr[-4000:]
    second = run_rl(run_dir, *_sglang("rl.steps=3", "rl.max_staleness=0", "rl.checkpoint.save_every=1"), learners=1, rollouts=1)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "resumed from" in second.stderr and "step_00000002" in second.stderr
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3] and all(r["staleness/max"] == 0 for r in rows)
    assert all(r["loss/behaviour_mismatch"] < 1e-3 for r in rows), [r["loss/behaviour_mismatch"] for r in rows]
    assert rows[-1]["sync/mismatched_versions"] == 0
    assert not _sglang_left(run_dir)


def test_a_killed_sglang_server_is_restarted_and_resynced(sft_run):
    run_dir = sft_run("apr", name="sglang_restart")
    first_server = []

    def victim(launcher_pid):
        first_server.append(_server_pid(run_dir))
        return first_server[0]
    code, stderr = _run_and_kill(run_dir, victim, *_sglang("rl.steps=4", "rl.checkpoint.save_every=1", "rl.max_staleness=1"),
                                 rollouts=2, sig=signal.SIGKILL)
    assert code == 0, stderr[-4000:]
    assert "the inference server died (killed by signal 9); restarting it" in stderr
    rows = read_scalars(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4] and rows[-1]["faults/server_restarts"] == 1
    assert rows[-1]["sync/mismatched_versions"] == 0 and rows[-1]["sync/checked_versions"] >= 2
    assert _server_pid(run_dir) != first_server[0]
    trained = [tuple(g[:2]) for line in (run_dir / "rl" / "groups.jsonl").read_text().splitlines()
               for g in json.loads(line)["groups"]]
    assert len(set(trained)) == len(trained)
    # the killed launcher's scheduler and detokenizer went with it, and the rest stopped at the end
    assert not group_members(first_server[0]) and not _sglang_left(run_dir)
