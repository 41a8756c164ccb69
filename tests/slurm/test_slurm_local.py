"""tools/slurm_local.sh itself: it tells its own daemons from other processes, and a failed start is retried."""

import os
import signal
import subprocess
import time

from launching import process_alive
from slurm_cluster import SLURM_LOCAL


def test_stop_leaves_a_process_that_only_reuses_a_recorded_pid(tmp_path):
    # A PID file outlives its daemon; by the next stop the PID may belong to someone else's process.
    other = subprocess.Popen(["sleep", "120"], start_new_session=True)
    try:
        (tmp_path / "slurmd.pid").write_text(f"{other.pid} 1\n")  # this PID, but a start time it never had
        (tmp_path / "munged.pid").write_text(f"{other.pid}\n")  # a PID file of the old format
        done = subprocess.run([str(SLURM_LOCAL), "stop", str(tmp_path)], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert process_alive(other.pid)
        assert not (tmp_path / "slurmd.pid").exists() and not (tmp_path / "munged.pid").exists()
        status = subprocess.run([str(SLURM_LOCAL), "status", str(tmp_path)], capture_output=True, text=True,
                                timeout=60)
        assert "slurmd not running" in status.stdout
    finally:
        os.kill(other.pid, signal.SIGKILL)
        other.wait()


def test_a_daemon_that_dies_during_start_is_reported_and_the_start_retried(slurm, tmp_path):
    # `slurm` only makes sure slurm is installed; this test starts a second, private cluster beside it.
    # Its munged fails once, on purpose, and then is the real one.
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    calls = tmp_path / "munged_calls"
    (fake_bin / "munged").write_text(
        "#!/bin/bash\n"
        f"echo call >>{calls}\n"
        f'if [[ $(wc -l <{calls}) == 1 ]]; then echo "munged failing on purpose" >&2; exit 7; fi\n'
        f'exec {subprocess.check_output(["bash", "-c", "command -v munged"], text=True).strip()} "$@"\n')
    (fake_bin / "munged").chmod(0o755)
    state_dir = tmp_path / "cluster"
    env = {**os.environ, "PATH": f"{fake_bin}{os.pathsep}{os.environ['PATH']}"}
    try:
        done = subprocess.run([str(SLURM_LOCAL), "start", str(state_dir)], env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr
        assert "munged failing on purpose" in done.stderr
        assert "munged (pid" in done.stderr and "exited during start with status 7" in done.stderr
        assert "start attempt 1 of 3 failed; retrying" in done.stderr
        status = subprocess.run([str(SLURM_LOCAL), "status", str(state_dir)], capture_output=True, text=True,
                                timeout=60).stdout
        assert "idle" in status
        pids = [int((state_dir / f"{daemon}.pid").read_text().split()[0]) for daemon in ("munged", "slurmctld", "slurmd")]
        assert all(process_alive(pid) for pid in pids)
    finally:
        subprocess.run([str(SLURM_LOCAL), "stop", str(state_dir)], capture_output=True, timeout=180)
    deadline = time.monotonic() + 5
    while any(process_alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(process_alive(pid) for pid in pids)
