"""The learner's train_step on real ZeRO-3 engines (learner_step_worker.py, a process of its own): leaving
zero-advantage sequences out (A = R at beta 0) lands on the same weights, and every PPO epoch is one optimizer step
over its whole batch, whatever the step's micro-batch count."""

import json
import os
import subprocess
import sys
from pathlib import Path

WORKER = Path(__file__).with_name("learner_step_worker.py")


def run_worker(mode: str) -> dict:
    proc = subprocess.run([sys.executable, str(WORKER), mode], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_skipping_zero_advantage_sequences_leaves_the_update_unchanged():
    result = run_worker("skip")
    # 24 sequences in 16 programs, 8 of them solved: 11 sequences carry an advantage, all 24 normalise the loss
    assert result["whole"] == {"sequences": 24, "trained_sequences": 24, "penalised_tokens": 0}
    assert result["skipped"] == {"sequences": 24, "trained_sequences": 11, "penalised_tokens": 0}
    assert result["moved"] > 1e-3  # the step did move the weights, so equal weights are not a vacuous match
    assert result["skipped_vs_whole"] < 1e-3 * result["moved"], result  # float noise only (measured 7e-9 of 3e-3)
    # dividing by the 11 trained sequences instead would scale the update by 24/11: the check above would catch it
    assert result["renormalised_vs_whole"] > 0.5 * result["moved"], result


def test_each_ppo_epoch_is_one_optimizer_step_at_its_end_whatever_the_micro_batch_count():
    # 3 micro-batches x 2 epochs, then 4 x 2: the weights change after calls 3, 6, 10 and 14. DeepSpeed's own
    # boundary count runs on across train_steps, so the second step's updates came after calls 8 and 12, each
    # mixing two epochs' micro-batches, and its last two micro-batches carried into the step after.
    assert run_worker("boundaries") == {"step_calls": 14, "updates_at": [3, 6, 10, 14]}
