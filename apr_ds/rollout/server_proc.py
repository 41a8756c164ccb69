"""Start and stop an inference server as a child process we own (ours on CPU, SGLang on GPU, or SGLang's CPU
engine in the tests).

    with ServerProcess.start_ours("runs/tiny/sft/apr/hf", log_path="runs/tiny/eval/server.log") as server:
        ... RolloutClient(server.url) ...

The process runs in its own session, so stopping it (by its PID's process group) also stops anything it
started; only what this object started is ever signalled.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from apr_ds.cluster.ports import free_port
from apr_ds.errors import ServerError, UserError


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`, read from /proc (Linux)."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry))
    return members


def _die_with_parent() -> None:
    """Linux: the server gets SIGTERM if its owner dies without stopping it (e.g. an MPI abort kills the rank)."""
    if sys.platform.startswith("linux"):
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


# SGLang's CPU engine as the tests run it (shared/docs/sglang-on-cpu.md): the torch attention backend, no CUDA
# graphs, and a KV pool sized in tokens, since a fraction of "GPU memory" means nothing on a CPU. An idle SGLang
# scheduler polls in a busy loop, a whole core taken from the learners and the other servers, unless it may sleep.
SGLANG_CPU_ARGS = ["--device", "cpu", "--attention-backend", "torch_native", "--disable-cuda-graph",
                   "--mem-fraction-static", "0.1", "--max-total-tokens", "32768", "--skip-server-warmup",
                   "--sleep-on-idle"]


def sglang_context_length(max_context: int) -> int:
    """The --context-length C at which SGLang serves a thread of exactly `max_context` tokens.

    SGLang 0.5.23 caps a request's prompt + output at C - 2 tokens: its scheduler's request limit is C - 1
    (tp_worker.py, max_req_len) and it clips max_new_tokens to that limit - prompt - 1 (scheduler.py,
    init_req_max_new_tokens). So C = max_context + 2: a request with prompt + max_new_tokens = max_context
    gets all its tokens, and no position past max_context - 1 is computed. Prompts of C - 6 tokens or more are
    refused (max_req_input_len = max_req_len - 5); the runtime treats that refusal as a full context.
    tests/conformance checks both limits against the real server.
    """
    return max_context + 2


def serving_dtype(precision: str) -> str:
    """SGLang's --dtype for a learner training in `precision` (rl.deepspeed.precision): the dtype it broadcasts, so behaviour
    log-probs come from the precision being trained and the read-back probe compares like with like."""
    return {"fp32": "float32", "bf16": "bfloat16"}[precision]


CHECKOUT_SGLANG_PYTHON = Path(__file__).resolve().parents[2] / ".venv-sglang" / "bin" / "python"


def resolve_sglang_python(configured: str) -> str:
    """The interpreter that runs SGLang: `configured` (rl.sglang_python) if given; else this one if it can import
    sglang (a GPU node with the `sglang` extra); else this checkout's `make sglang` venv if built. "" if none."""
    if configured:
        return configured
    if has_sglang(sys.executable):
        return sys.executable
    return str(CHECKOUT_SGLANG_PYTHON) if CHECKOUT_SGLANG_PYTHON.is_file() else ""


def has_sglang(python: str) -> bool:
    """Whether `python` can import sglang, asked without importing it (which takes seconds)."""
    probe = [python, "-c", "import importlib.util, sys; sys.exit(importlib.util.find_spec('sglang') is None)"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def checkpoint_dtype(model_dir: str) -> str:
    """The dtype a Hugging Face checkpoint was saved in (config.json), for serving it as it is (evaluation)."""
    config = json.loads((Path(model_dir) / "config.json").read_text())
    return str(config.get("dtype") or config.get("torch_dtype") or "float32")


def sglang_device() -> str:
    """cuda where this node has GPUs, else cpu (SGLang's CPU engine, as the tests run it)."""
    import torch
    return "cuda" if torch.cuda.is_available() else "cpu"


def sglang_command(model_dir: str, max_context: int, *, host: str, port: int, python: str = "", dtype: str = "float32",
                   device: str = "cuda", devices: list[str] | None = None, extra_args: list[str] | None = None,
                   threads: int | None = None) -> tuple[list[str], dict]:
    """The command and extra environment of `python -m sglang.launch_server` serving threads of `max_context` tokens.

    `python` (empty: this interpreter) lets SGLang live in a venv of its own. `dtype` is what the learner
    broadcasts (`serving_dtype`): SGLang's `auto` would serve an fp32 export in fp16. `devices` becomes the
    server's CUDA_VISIBLE_DEVICES (apr_ds.cluster.placement). On `device` "cpu" it runs SGLang's CPU engine.
    """
    args = [str(arg) for arg in extra_args or []]
    command = [python or sys.executable, "-m", "sglang.launch_server", "--model-path", str(model_dir),
               "--tokenizer-path", str(model_dir), "--host", host, "--port", str(port),
               "--context-length", str(sglang_context_length(max_context)), "--dtype", dtype]
    # SGLang refuses a context longer than the model's positions without this; no position past
    # rollout.max_context - 1 < max_position_embeddings is ever computed (sglang_context_length)
    env = {"SGLANG_ALLOW_OVERWRITE_LONGER_CONTEXT_LEN": "1"}
    if device == "cpu":
        command += SGLANG_CPU_ARGS if "--device" not in args else []
        env.update(SGLANG_USE_CPU_ENGINE="1", OMP_NUM_THREADS=str(threads or 1))
    if devices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(devices)
    return command + args, env


class ServerProcess:
    def __init__(self, command: list[str], url: str, log_path: str | None = None, env: dict | None = None):
        self.command, self.url, self.log_path = command, url, log_path
        self._log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **(env or {})}, preexec_fn=_die_with_parent)

    @classmethod
    def start_sglang(cls, model_dir: str, max_context: int, *, host: str = "127.0.0.1", port: int | None = None,
                     log_path: str | None = None, **options) -> "ServerProcess":
        """SGLang as `sglang_command` builds it (options: python, dtype, device, devices, extra_args, threads)."""
        port = port or free_port(host)
        command, env = sglang_command(model_dir, max_context, host=host, port=port, **options)
        return cls(command, f"http://{host}:{port}", log_path, env)

    @classmethod
    def start_ours(cls, model_dir: str, host: str = "127.0.0.1", port: int | None = None, log_path: str | None = None,
                   overrides: list[str] | None = None, threads: int | None = None) -> "ServerProcess":
        port = port or free_port(host)
        command = [sys.executable, "-m", "apr_ds.cli", "serve", "--model", str(model_dir), "--host", host,
                   "--port", str(port), *(overrides or [])]
        env = {"OMP_NUM_THREADS": str(threads)} if threads else None
        return cls(command, f"http://{host}:{port}", log_path, env)

    def wait_healthy(self, timeout_s: float = 600.0) -> "ServerProcess":
        """Blocks until /health answers; call it outside an event loop (or in a thread: asyncio.to_thread)."""
        from apr_ds.rollout.client import wait_until_healthy
        log = f"; {self.log_path} ends with:\n" if self.log_path else ""
        try:
            if wait_until_healthy(self.url, timeout_s, alive=lambda: self.proc.poll() is None):
                return self
        except ServerError:
            self.stop()
            raise UserError(f"the inference server at {self.url} was not healthy after {timeout_s:.0f}s "
                            f"(rl.server_start_timeout_s){log and log + self.log_tail()}") from None
        raise UserError(f"the inference server exited with code {self.proc.returncode} before it was healthy"
                        f"{log and log + self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return b"\n".join(f.read().splitlines()[-lines:]).decode(errors="replace")
        except OSError:
            return ""

    def stop(self, grace_s: float = 10.0) -> None:
        """SIGTERM to the server's process group, SIGKILL after `grace_s`; returns once no process of the group
        is left (SGLang forks a scheduler and a detokenizer, which may outlive the process we started)."""
        if self.proc.poll() is None:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                _killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace_s
        while group_members(self.proc.pid):
            if time.monotonic() > deadline:
                _killpg(self.proc.pid, signal.SIGKILL)
            time.sleep(0.1)
        if self._log is not subprocess.DEVNULL:
            self._log.close()
            self._log = subprocess.DEVNULL

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
