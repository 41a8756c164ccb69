#!/usr/bin/env bash
# The cpu-preset experiment of docs/results.md, start to finish, on one 2-core machine (about 5 hours).
#
#   bash tools/reproduce_cpu.sh            # after `make install`; writes runs/cpu and runs/cpu_solved
#
# Stage 1 trains both methods on the preset's mixed beam widths (1..3). Stage 2 continues each model on
# fixed-width-3 traces of the same problems, solved ones only (the SoS+ traces that fit in 768 tokens are
# all solved ones anyway, so this puts the two methods' data on equal terms). SoS+ and APR train side by
# side, one rank and one thread each: the most tokens per second from two cores (cpu-scale-probe §3).
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=1
A=".venv/bin/apr-ds"
WIDE=(run_dir=runs/cpu_solved data.keep_failed=false solver.sosp_min_beam=3 solver.sosp_max_beam=3
      solver.apr_min_beam=3 solver.apr_max_beam=3 solver.apr_max_child_beam=3)

# Stage 1: mixed beams 1..3 (~19M tokens per method, ~85 min side by side).
$A data --preset cpu
$A sft --preset cpu sft.method=sosp sft.steps=1400 sft.deepspeed.micro_batch=8 &
sosp=$!
$A sft --preset cpu sft.method=apr sft.steps=1900 sft.deepspeed.micro_batch=8
wait $sosp

# Stage 2: fixed beam 3, from the stage-1 models (~8M tokens per method, ~30 min side by side).
$A data --preset cpu "${WIDE[@]}"
STAGE2=(sft.deepspeed.micro_batch=8 "sft.init_model=runs/cpu/sft/{method}/hf" sft.optim.lr=7.5e-4
        sft.optim.warmup_start_lr=1.5e-4 sft.optim.warmup_steps=20 sft.optim.min_lr=7.5e-5 sft.eval_every=150
        sft.checkpoint.save_every=150)
$A sft --preset cpu "${WIDE[@]}" sft.method=sosp sft.steps=450 "${STAGE2[@]}" &
sosp=$!
$A sft --preset cpu "${WIDE[@]}" sft.method=apr sft.steps=650 "${STAGE2[@]}"
wait $sosp

# Evaluate both stages (500 held-out problems, greedy, windows 512 and 768), two at a time.
for run in cpu cpu_solved; do
    $A eval --preset cpu run_dir=runs/$run --model runs/$run/sft/sosp/hf --method sosp --tag _sft &
    sosp=$!
    $A eval --preset cpu run_dir=runs/$run --model runs/$run/sft/apr/hf --method apr --tag _sft
    wait $sosp
done

# RL from the stage-2 APR model with the cpu_rl preset, the recipe of the shipped apr_rl model (apr_ds/presets/cpu_rl.yaml
# says what each setting is for): A = R with a per-line penalty and a KL term, 32 prompts x 8 a step, 1 learner +
# 2 rollout ranks sharing both cores; 10 steps (about 75 min).
$A rl --preset cpu_rl run_dir=runs/cpu_solved
$A eval --preset cpu run_dir=runs/cpu_solved --model runs/cpu_solved/rl/hf --method apr --tag _rl

$A report runs/cpu_solved --out runs/cpu_solved/report
