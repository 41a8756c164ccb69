"""Fixtures of the multi-process seam tests."""

import os
import shutil
import subprocess
import sys

import pytest

from rl_fixtures import TASK

@pytest.fixture(scope="session")
def _trained(tmp_path_factory):
    base = tmp_path_factory.mktemp("rl_base")
    cli = [sys.executable, "-m", "apr_ds.cli"]
    subprocess.run(cli + ["data", "--preset", "tiny", f"run_dir={base}", *TASK], check=True, capture_output=True, timeout=300)
    subprocess.run(cli + ["sft", "--preset", "tiny", f"run_dir={base}", "sft.method=apr", "sft.steps=250", "sft.optim.lr=3e-3",
                          "sft.eval_every=250", "sft.checkpoint.save_every=250", "sft.probe_problems=0"],
                   check=True, capture_output=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "2"})
    return base


@pytest.fixture
def sft_run(_trained, tmp_path):
    """A fresh run directory holding the shared data and SFT model."""
    def make(method="apr", name="run"):
        run_dir = tmp_path / name
        shutil.copytree(_trained / "data", run_dir / "data")
        shutil.copytree(_trained / "sft" / method / "hf", run_dir / "sft" / method / "hf")
        return run_dir
    return make


