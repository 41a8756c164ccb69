"""Run a launcher (torchrun, mpirun, deepspeed) in its own process group and kill that whole group afterwards,
so nothing it started outlives the test; and tell whether a process a test started is still running."""

import os
import signal
import subprocess


def launch(cmd, env, cwd, timeout=600) -> tuple[int, str]:
    proc = subprocess.Popen([str(c) for c in cmd], cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
    return proc.returncode, out


def process_alive(pid: int) -> bool:
    """A zombie or dying process counts as gone: it has exited, only its parent's wait is missing."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False
