"""Run a launcher (torchrun, mpirun, deepspeed) in its own process group and kill that whole group afterwards,
so nothing it started outlives the test."""

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
