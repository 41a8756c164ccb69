import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture
def apr_ds_cli():
    """The installed console script's equivalent, run as a real subprocess."""
    return [sys.executable, "-m", "apr_ds.cli"]
