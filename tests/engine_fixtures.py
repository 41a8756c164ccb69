"""Shared pieces of the engine tests: a random tiny Llama on disk and a real `apr-ds serve` process.

Every server is a child process on a free 127.0.0.1 port, stopped by its PID in a finally block.
"""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

from apr_ds.cluster.ports import free_port

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "OMP_NUM_THREADS": "1"}
STARTUP_TIMEOUT_S = 120


def save_model(directory, **kwargs):
    """A random model (a transformers causal LM of `family`, default llama; eval mode) saved with the domain tokenizer."""
    import torch
    torch.set_num_threads(1)
    from apr_ds.engine.toy import save_random_model
    return save_random_model(directory, **kwargs).eval()


@contextmanager
def serve(model_dir, *overrides, api_key=None, log_path=None):
    """Run `apr-ds serve` on a free port; yields its base URL; always stopped by PID."""
    port = free_port()
    cmd = [sys.executable, "-m", "apr_ds.cli", "serve", "--model", str(model_dir), "--port", str(port),
           "engine.num_threads=1", *overrides]
    if api_key:
        cmd += ["--api-key", api_key]
    log = open(log_path or os.devnull, "w")
    proc = subprocess.Popen(cmd, env=ENV, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_until_listening(proc, port)
        yield url
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()


def _wait_until_listening(proc, port):
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"apr-ds serve exited with {proc.returncode} before listening")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise RuntimeError("apr-ds serve did not start listening in time")


def run(coro):
    return asyncio.run(coro)


async def wait_for_load(client, predicate, timeout_s=60.0):
    """Poll /get_load until predicate(load) holds (a bound on waiting, not a timing assertion)."""
    deadline = time.monotonic() + timeout_s
    while True:
        [load] = await client.request("GET", "/get_load")
        if predicate(load):
            return load
        if time.monotonic() > deadline:
            raise AssertionError(f"server load never reached the expected state: {load}")
        await asyncio.sleep(0.02)
