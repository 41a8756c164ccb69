#!/usr/bin/env bash
# Per-rank wrapper run by srun in slurm/*.sbatch: check that this rank landed where plan.py put it, give a rollout
# rank its own GPUs out of those slurm gave the task (plan.py's positions in that list), then become the rank's
# command (exec: the rank is this process, signals reach it directly).
#   srun ... slurm/task.sh RANKS_TSV command...
set -euo pipefail
ranks_tsv=$1; shift
rank=${SLURM_PROCID:?task.sh runs under srun}
# read fails on no line at all; under set -e that would end the task before it says why
read -r _ host role devices < <(awk -F'\t' -v r="$rank" '$1 == r' "$ranks_tsv") || true
if [[ -z ${host:-} ]]; then
    echo "task.sh: rank $rank is not in $ranks_tsv (srun started more tasks than planned)" >&2
    exit 1
fi
if [[ ${SLURMD_NODENAME:-$(hostname -s)} != "${host%%.*}" ]]; then
    echo "task.sh: rank $rank ($role) runs on ${SLURMD_NODENAME:-$(hostname -s)} but was planned on $host; srun did not honour" \
         "--distribution=arbitrary with SLURM_HOSTFILE" >&2
    exit 1
fi

# The node's GPUs as this task sees them, and where that list came from. CUDA_VISIBLE_DEVICES first: it is what
# CUDA enumerates here (under cgroup isolation slurm renumbers it from 0, while SLURM_*_GPUS keep the node's
# physical indices), so the others only stand in when slurm set no CUDA_VISIBLE_DEVICES.
node_gpus() {
    if [[ -n ${CUDA_VISIBLE_DEVICES+set} ]]; then gpu_list=$CUDA_VISIBLE_DEVICES; gpu_source=CUDA_VISIBLE_DEVICES
    elif [[ -n ${SLURM_STEP_GPUS+set} ]]; then gpu_list=$SLURM_STEP_GPUS; gpu_source=SLURM_STEP_GPUS
    elif [[ -n ${SLURM_JOB_GPUS+set} ]]; then gpu_list=$SLURM_JOB_GPUS; gpu_source=SLURM_JOB_GPUS
    else gpu_list=; gpu_source=; fi
}

# plan.py's positions ("0,1": the node's first two GPUs) -> those entries of the node's list (indices or UUIDs).
# Without any list the whole node is visible, and a position is the device index.
devices_at() {  # positions
    local positions=$1 position
    node_gpus
    if [[ -z $gpu_source ]]; then echo "$positions"; return; fi
    local -a gpus wanted chosen=()
    IFS=, read -r -a gpus <<<"${gpu_list// /}"
    IFS=, read -r -a wanted <<<"$positions"
    for position in "${wanted[@]}"; do
        if ((position >= ${#gpus[@]})); then
            echo "task.sh: rank $rank ($role) is planned on GPU positions $positions of its node, but this task sees" \
                 "${#gpus[@]} GPU(s) ($gpu_source=$gpu_list). Give every task the node's GPUs (no --gpus-per-task or" \
                 "--gpu-bind on the job), or lower APR_ROLLOUT_GPUS / --tp-size" >&2
            return 1
        fi
        chosen+=("${gpus[position]}")
    done
    (IFS=,; echo "${chosen[*]}")
}

export APR_ROLE=$role
if [[ $devices != "-" ]]; then
    visible=$(devices_at "$devices")
    node_gpus
    echo "task.sh: rank $rank ($role): CUDA_VISIBLE_DEVICES=$visible (positions $devices of" \
         "${gpu_source:-the whole node}${gpu_source:+=$gpu_list})" >&2
    export CUDA_VISIBLE_DEVICES=$visible  # a rollout rank's server sees only its own GPUs
fi
exec "$@"
