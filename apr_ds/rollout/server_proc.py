"""Start and stop an inference server as a child process we own (ours on CPU, SGLang on GPU).

    with ServerProcess.start_ours("runs/tiny/sft/apr/hf", log_path="runs/tiny/eval/server.log") as server:
        ... RolloutClient(server.url) ...

The process runs in its own session, so stopping it (by its PID's process group) also stops anything it
started; only what this object started is ever signalled.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request

from apr_ds.dist.ports import free_port
from apr_ds.errors import UserError


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if its owner dies without stopping it (e.g. an MPI abort kills the rank)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class ServerProcess:
    def __init__(self, command: list[str], url: str, log_path: str | None = None, env: dict | None = None):
        self.command, self.url, self.log_path = command, url, log_path
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)

    @classmethod
    def start_sglang(cls, model_dir: str, context_length: int, host: str = "127.0.0.1", port: int | None = None,
                     log_path: str | None = None, extra_args: list[str] | None = None) -> "ServerProcess":
        """SGLang on this node's GPUs (not runnable on CPU machines). `--context-length` is one more than the
        per-thread limit because SGLang refuses prompt + max_new_tokens >= its context length."""
        port = port or free_port(host)
        command = [sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir), "--tokenizer-path",
                   str(model_dir), "--host", host, "--port", str(port), "--context-length", str(context_length + 1),
                   *(extra_args or [])]
        return cls(command, f"http://{host}:{port}", log_path)

    @classmethod
    def start_ours(cls, model_dir: str, host: str = "127.0.0.1", port: int | None = None, log_path: str | None = None,
                   overrides: list[str] | None = None, threads: int | None = None) -> "ServerProcess":
        port = port or free_port(host)
        command = [sys.executable, "-m", "apr_ds.cli", "serve", "--model", str(model_dir), "--host", host,
                   "--port", str(port), *(overrides or [])]
        env = {"OMP_NUM_THREADS": str(threads)} if threads else None
        return cls(command, f"http://{host}:{port}", log_path, env)

    def wait_healthy(self, timeout_s: float = 180.0) -> "ServerProcess":
        deadline = time.time() + timeout_s
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise UserError(f"the inference server exited with code {self.proc.returncode} before it was healthy"
                                + (f"; {self.log_path} ends with:\n{self.log_tail()}" if self.log_path else ""))
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                    if response.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.2)
        self.stop()
        raise UserError(f"the inference server at {self.url} was not healthy after {timeout_s:.0f}s")

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
