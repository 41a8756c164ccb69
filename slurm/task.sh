#!/usr/bin/env bash
# Per-rank wrapper run by srun in slurm/*.sbatch: check that this rank landed where plan.py put it, give a rollout
# rank its own GPUs, then become the rank's command (exec: the rank is this process, signals reach it directly).
#   srun ... slurm/task.sh RANKS_TSV command...
set -euo pipefail
ranks_tsv=$1; shift
rank=${SLURM_PROCID:?task.sh runs under srun}
read -r _ host role devices < <(awk -F'\t' -v r="$rank" '$1 == r' "$ranks_tsv")
if [[ -z ${host:-} ]]; then
    echo "task.sh: rank $rank is not in $ranks_tsv (srun started more tasks than planned)" >&2
    exit 1
fi
if [[ ${SLURMD_NODENAME:-$(hostname -s)} != "${host%%.*}" ]]; then
    echo "task.sh: rank $rank ($role) runs on ${SLURMD_NODENAME:-$(hostname -s)} but was planned on $host; srun did not honour" \
         "--distribution=arbitrary with SLURM_HOSTFILE" >&2
    exit 1
fi
export APR_ROLE=$role
if [[ $devices != "-" ]]; then
    export CUDA_VISIBLE_DEVICES=$devices  # a rollout rank's server sees only its own GPUs
fi
exec "$@"
