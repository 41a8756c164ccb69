"""Leaving zero-advantage sequences out of the learner (A = R at beta 0) changes nothing but the work: the real
train_step on real ZeRO-3 engines (skip_worker.py, a process of its own) lands on the same weights."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("skip_worker.py")


def test_skipping_zero_advantage_sequences_leaves_the_update_unchanged():
    proc = subprocess.run([sys.executable, str(WORKER)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # 24 sequences in 16 programs, 8 of them solved: 11 sequences carry an advantage, all 24 normalise the loss
    assert result["whole"] == {"sequences": 24, "trained_sequences": 24}
    assert result["skipped"] == {"sequences": 24, "trained_sequences": 11}
    assert result["moved"] > 1e-3  # the step did move the weights, so equal weights are not a vacuous match
    assert result["skipped_vs_whole"] < 1e-3 * result["moved"], result  # float noise only (measured 7e-9 of 3e-3)
    # dividing by the 11 trained sequences instead would scale the update by 24/11: the check above would catch it
    assert result["renormalised_vs_whole"] > 0.5 * result["moved"], result
