"""The two servers the rollout side talks to, started for tests: `apr-ds serve` and real SGLang (its CPU engine,
from the venv `make sglang` builds). Both are child processes on 127.0.0.1 that `ServerProcess` stops with their
whole process group; `started` also checks that nothing of the group outlives the stop.

Real SGLang is part of the suite: where APR_SGLANG_PYTHON is set (`make test` sets it) or on CI, a missing SGLang
venv fails the test; elsewhere (a developer's plain `pytest`) it skips and says how to build the venv.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

import pytest

from apr_ds.rollout.server_proc import ServerProcess, group_members

REPO = Path(__file__).resolve().parents[1]
SHIPPED_APR = REPO / "checkpoints" / "cpu" / "apr"
START_TIMEOUT_S = 300


def sglang_python() -> str:
    """The interpreter of the SGLang test venv, or a skip (a failure where SGLang is required)."""
    given = os.environ.get("APR_SGLANG_PYTHON")
    python = Path(given) if given else REPO / ".venv-sglang" / "bin" / "python"
    if python.is_file():
        return str(python)
    message = f"real SGLang is not installed at {python}: `make sglang` builds it (`make test` does)"
    if given or os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def start(kind: str, model_dir, max_context: int, log_path, **kwargs) -> ServerProcess:
    """`ours` or `sglang`, serving `model_dir` for threads of `max_context` tokens, not yet healthy."""
    if kind == "sglang":
        return ServerProcess.start_sglang(str(model_dir), max_context, python=sglang_python(), device="cpu",
                                          log_path=str(log_path), **kwargs)
    return ServerProcess.start_ours(str(model_dir), log_path=str(log_path), threads=1,
                                    overrides=[f"engine.max_model_len={max_context}", "engine.num_threads=1"])


@contextmanager
def started(kind: str, model_dir, max_context: int, log_path, **kwargs):
    """A healthy server for the block; afterwards asserts that no process of its group survived the stop."""
    server = start(kind, model_dir, max_context, log_path, **kwargs)
    try:
        server.wait_healthy(START_TIMEOUT_S)
        yield server
    finally:
        server.stop()
        survivors = group_members(server.proc.pid)
        assert not survivors, f"{kind} server left processes {survivors} running after stop"
