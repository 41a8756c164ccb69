# Shared by slurm/train.sbatch, sft.sbatch and eval.sbatch (sourced, not run). What it does for a job:
#   - finds the repo and its Python (APR_DS_ROOT, APR_PYTHON; default: the repo this file is in and its .venv),
#     and puts that Python's bin/ first on PATH;
#   - sets the environment: threads per rank, NCCL settings the weight-update group needs, quiet warnings;
#   - makes the job's log folder APR_LOG_ROOT/<job name>-<job id>/attempt-<restart count>/ (APR_LOG_ROOT
#     defaults to logs/ under the submit directory), so a requeued job keeps each attempt's logs;
#   - runs one srun step (apr_srun) in the background, forwards SIGTERM/SIGINT to it, and on exit stops only
#     the processes this script started (by PID); a failed step prints its exit code and the log's last lines.

set -euo pipefail

apr_log() { echo "[$(date '+%F %T')] $*"; }

# The repo is the parent of this file's folder (this file is sourced from the repo, not from sbatch's spool).
APR_DS_ROOT=${APR_DS_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
export APR_DS_ROOT

apr_setup() {  # stage
    APR_STAGE=$1
    if [[ -z ${APR_PYTHON:-} ]]; then
        if [[ -x $APR_DS_ROOT/.venv/bin/python ]]; then APR_PYTHON=$APR_DS_ROOT/.venv/bin/python
        else APR_PYTHON=$(command -v python3); fi
    fi
    export APR_PYTHON
    export PATH="$(dirname "$APR_PYTHON"):$PATH"
    export PYTHONPATH=$APR_DS_ROOT${PYTHONPATH:+:$PYTHONPATH}  # this repo's apr_ds, installed or not
    export PYTHONUNBUFFERED=1
    export PYTHONWARNINGS=${PYTHONWARNINGS:-ignore::FutureWarning}
    # One compute thread per CPU the rank owns; on a shared CPU box keep it at 1.
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    # NCCL (ignored on CPU, where gloo is used). The weight-update group between learner rank 0 and the SGLang
    # servers is a second NCCL communicator on the same GPUs as the servers' own: cuMem allocations and NVLS
    # make that hang or fail (AReaL sets both for its SGLang weight group; docs/scaling.md).
    export NCCL_CUMEM_ENABLE=${NCCL_CUMEM_ENABLE:-0}
    export NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-0}
    # A collective that fails or times out raises instead of hanging the step (torch >= 2.2 name).
    export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
    export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
    # The MPI wire-up srun offers the ranks: pmi2 for the pip `mpich` wheel (it has no PMIx client);
    # pmix for PMIx-only stacks (Open MPI 5, HPC-X), which have no PMI-2 client, so under pmi2 their ranks
    # cannot find each other: `APR_SRUN_MPI=pmix sbatch slurm/train.sbatch ...`, with mpi4py built against that
    # MPI (not the mpich wheel). `srun --mpi=list` shows what the cluster has.
    APR_SRUN_MPI=${APR_SRUN_MPI:-pmi2}

    local root=${APR_LOG_ROOT:-${SLURM_SUBMIT_DIR:-$PWD}/logs}
    APR_JOB_LOG_DIR=$root/${SLURM_JOB_NAME:-apr-$APR_STAGE}-${SLURM_JOB_ID:-local}
    APR_ATTEMPT_DIR=$APR_JOB_LOG_DIR/attempt-${SLURM_RESTART_COUNT:-0}
    mkdir -p "$APR_ATTEMPT_DIR"
    export APR_JOB_LOG_DIR APR_ATTEMPT_DIR

    APR_PIDS=()
    trap 'apr_forward TERM' TERM
    trap 'apr_forward INT' INT
    trap 'apr_cleanup' EXIT
    apr_log "apr-ds $APR_STAGE: job ${SLURM_JOB_ID:-none} attempt ${SLURM_RESTART_COUNT:-0} on ${SLURM_JOB_NODELIST:-$(hostname -s)}"
    apr_log "repo $APR_DS_ROOT, python $APR_PYTHON, logs $APR_ATTEMPT_DIR"
    {
        echo "job=${SLURM_JOB_ID:-} name=${SLURM_JOB_NAME:-} restart=${SLURM_RESTART_COUNT:-0} nodes=${SLURM_JOB_NODELIST:-}"
        env | grep -E '^(SLURM_|APR_|NCCL_|TORCH_NCCL|OMP_NUM_THREADS|CUDA_VISIBLE_DEVICES|MASTER_)' | sort
    } >"$APR_ATTEMPT_DIR/env.txt"
}

apr_plan() {  # command args... : layout + resolved values from slurm/plan.py, as APR_* shell variables
    local out
    out=$("$APR_PYTHON" "$APR_DS_ROOT/slurm/plan.py" "$@") || { apr_log "plan.py failed; see the lines above"; exit 2; }
    eval "$out"
    apr_log "layout ($APR_NUM_RANKS ranks on $APR_NUM_NODES node(s), $APR_GPUS_PER_NODE GPU(s) per node):"
    awk -F'\t' '{printf "    rank %s  %-8s %s%s\n", $1, $3, $2, ($4 == "-" ? "" : "  GPUs " $4)}' "$APR_ATTEMPT_DIR/ranks.tsv"
}

# srun options that place one MPI world exactly as planned (ranks.tsv / hostfile).
apr_srun_world_options() {
    export SLURM_HOSTFILE=$APR_ATTEMPT_DIR/hostfile
    APR_SRUN_OPTS=(--mpi="$APR_SRUN_MPI" --ntasks="$APR_NUM_RANKS" --nodes="$APR_NUM_NODES" --distribution=arbitrary)
    local cpus_on_node=${SLURM_CPUS_ON_NODE:-1} cpus
    cpus=$((cpus_on_node / APR_MAX_RANKS_PER_NODE))
    if ((cpus < 1)); then
        # More ranks than CPUs (a small CPU machine): let them share.
        APR_SRUN_OPTS+=(--cpus-per-task=1 --overcommit)
        apr_log "$APR_MAX_RANKS_PER_NODE ranks on a node with $cpus_on_node CPU(s): oversubscribing (--overcommit)"
    else
        APR_SRUN_OPTS+=(--cpus-per-task="$cpus")
    fi
}

# A step we started and that still runs: a background job of this shell (never a PID reused by someone else).
apr_alive() { [[ " $(jobs -pr | tr '\n' ' ') " == *" $1 "* ]]; }

apr_forget() { local keep=() p; for p in "${APR_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done; APR_PIDS=("${keep[@]}"); }

apr_srun() {  # name srun-options... -- command...   (output: $APR_ATTEMPT_DIR/<name>.log; returns srun's exit code)
    local name=$1; shift
    local log=$APR_ATTEMPT_DIR/$name.log
    printf '%q ' srun "$@" >>"$APR_ATTEMPT_DIR/commands.sh"
    echo >>"$APR_ATTEMPT_DIR/commands.sh"
    apr_log "step $name: srun $* (log: $log)"
    # --kill-on-bad-exit: one rank that dies ends the step instead of leaving the others blocked in a collective.
    # The step sets its own task counts; the job's --ntasks-per-node would only make srun warn.
    env -u SLURM_NTASKS_PER_NODE -u SLURM_TASKS_PER_NODE srun --kill-on-bad-exit=1 --label "$@" >>"$log" 2>&1 &
    local pid=$!
    APR_PIDS+=("$pid")
    local code=0
    while :; do
        wait "$pid" && code=0 || code=$?
        # `wait` also returns when a trapped signal arrives; keep waiting while the step is still there.
        apr_alive "$pid" || break
    done
    apr_forget "$pid"
    if ((code != 0)); then
        apr_log "step $name FAILED: srun exit code $code. Last lines of $log:"
        tail -n 40 "$log" | sed 's/^/    /'
    else
        apr_log "step $name done"
    fi
    return "$code"
}

apr_start_step() {  # name srun-options... -- command...   (a step that runs beside the script; PID in APR_STEP_PID)
    local name=$1; shift
    printf '%q ' srun "$@" >>"$APR_ATTEMPT_DIR/commands.sh"
    echo "&" >>"$APR_ATTEMPT_DIR/commands.sh"
    apr_log "step $name (background): srun $* (log: $APR_ATTEMPT_DIR/$name.log)"
    env -u SLURM_NTASKS_PER_NODE -u SLURM_TASKS_PER_NODE srun --kill-on-bad-exit=1 "$@" >>"$APR_ATTEMPT_DIR/$name.log" 2>&1 &
    APR_STEP_PID=$!
    APR_PIDS+=("$APR_STEP_PID")
}

apr_stop_step() {  # pid: end a step this script started (srun passes the signal on to the step's tasks)
    local pid=$1
    if apr_alive "$pid"; then
        kill -TERM "$pid" 2>/dev/null || true
        for _ in $(seq 1 100); do apr_alive "$pid" || break; sleep 0.2; done
        if apr_alive "$pid"; then kill -KILL "$pid" 2>/dev/null || true; fi
    fi
    wait "$pid" 2>/dev/null || true
    apr_forget "$pid"
}

apr_forward() {  # a signal for the job (scancel, preemption, time limit): pass it to the steps we started
    apr_log "received SIG$1; forwarding to our srun steps: ${APR_PIDS[*]:-none}"
    local pid
    for pid in "${APR_PIDS[@]}"; do
        if apr_alive "$pid"; then kill -"$1" "$pid" 2>/dev/null || true; fi
    done
}

apr_cleanup() {
    local code=$? pid
    for pid in "${APR_PIDS[@]}"; do
        apr_stop_step "$pid"
    done
    echo "$code" >"$APR_ATTEMPT_DIR/exit_code"
    apr_log "apr-ds $APR_STAGE: exit code $code"
}
