"""The one rank-aware logger and the one scalar writer (TensorBoard + a JSON-lines copy), for SFT and RL.

    from apr_ds.log import get_logger, ScalarWriter
    log = get_logger(__name__)          # info on rank 0 only; warnings and errors from every rank
    writer = ScalarWriter(out_dir / "tb", enabled=is_rank0())
    writer.scalars(step, {"train/loss": 1.2, "train/lr": 3e-4})
    writer.close()

The JSON-lines copy (`scalars.jsonl` next to the event files' directory) lets tests and reports read
the numbers without TensorBoard.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

_RANK_ENV = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "SLURM_PROCID")


def get_rank() -> int:
    """This process's global rank: from torch.distributed once initialised, else from the launcher's environment."""
    dist = sys.modules.get("torch.distributed")  # never import torch just to log
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    for name in _RANK_ENV:
        if name in os.environ:
            return int(os.environ[name])
    return 0


def is_rank0() -> bool:
    return get_rank() == 0


class _RankFilter(logging.Filter):
    """Rank 0 says everything; other ranks only warnings and errors. The rank is read at emit time,
    because loggers are created at import, before the process group exists."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = get_rank()
        record.rank = rank
        return rank == 0 or record.levelno >= logging.WARNING


def get_logger(name: str = "apr_ds") -> logging.Logger:
    """A logger under `apr_ds` printing `[apr_ds rank R] message`. Level from APR_LOG_LEVEL (default INFO)."""
    root = logging.getLogger("apr_ds")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("[apr_ds rank %(rank)s %(asctime)s] %(message)s", "%H:%M:%S"))
        handler.addFilter(_RankFilter())
        root.addHandler(handler)
        root.setLevel(os.environ.get("APR_LOG_LEVEL", "INFO").upper())
        root.propagate = False
    return logging.getLogger(name if name.startswith("apr_ds") else f"apr_ds.{name}")


class ScalarWriter:
    """TensorBoard scalars (and text) from one process; a disabled writer (other ranks) does nothing."""

    def __init__(self, log_dir: str | Path, enabled: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        self._tb = SummaryWriter(str(log_dir))
        self._jsonl = open(log_dir.parent / "scalars.jsonl", "a", buffering=1)

    def scalars(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: float(v) for k, v in values.items() if v is not None}  # NaN stays visible: it is news
        for tag, value in clean.items():
            self._tb.add_scalar(tag, value, global_step=step)
        self._jsonl.write(json.dumps({"step": step, **clean}) + "\n")

    def text(self, step: int, tag: str, text: str) -> None:
        if self.enabled:
            self._tb.add_text(tag, text, global_step=step)

    def flush(self) -> None:
        if self.enabled:
            self._tb.flush()
            self._jsonl.flush()

    def close(self) -> None:
        if self.enabled:
            self._tb.close()
            self._jsonl.close()
            self.enabled = False
