"""Rank layout for slurm/*.sbatch: which rank runs where, with which role and GPUs. Called by slurm/common.sh.

    python slurm/plan.py rl   OUT_DIR [apr-ds rl args...]     -> OUT_DIR/{hostfile,ranks.tsv}, shell assignments on stdout
    python slurm/plan.py sft  OUT_DIR [apr-ds sft args...]
    python slurm/plan.py eval OUT_DIR [apr-ds eval args...]

Inputs: the allocation (SLURM_JOB_NODELIST, SLURM_JOB_NUM_NODES, SLURM_GPUS_ON_NODE), the environment
(APR_LEARNER_NODES, APR_LEARNER_RANKS_PER_NODE, APR_ROLLOUT_RANKS_PER_NODE, APR_ROLLOUT_GPUS, APR_RANKS_PER_NODE)
and the resolved YAML (preset < --config < key=value, exactly as `apr-ds` resolves it).

RL layout (ranks 0..L-1 learners, L..L+R-1 rollout ranks, as `apr-ds rl` assigns roles):
  - one node: L = rl.learner_ranks and R = rl.rollout_ranks from the YAML, all on that node;
  - N > 1 nodes: the first APR_LEARNER_NODES hosts are learner nodes (default: enough for the YAML's
    rl.learner_ranks), the rest rollout nodes. Learner nodes run APR_LEARNER_RANKS_PER_NODE ranks (default:
    the GPUs per node, 1 without GPUs); rollout nodes run APR_ROLLOUT_RANKS_PER_NODE ranks (default: GPUs per
    node / APR_ROLLOUT_GPUS, 1 without GPUs). L and R then follow from the nodes and are passed on as overrides.
GPUs (apr_ds/cluster/placement.py): a learner sees every GPU of its node and takes the one of its node-local learner
index (LOCAL_RANK); a rollout rank's server gets the next APR_ROLLOUT_GPUS GPUs after the learners' on that node
(default: the --tp-size in rl.server_args, 1 without one). ranks.tsv's last column holds *positions* in the list of
GPUs slurm gave the node ("0,1" = its first two), not device indices: task.sh maps them through the task's
CUDA_VISIBLE_DEVICES (or SLURM_STEP_GPUS / SLURM_JOB_GPUS), which need not start at 0 or be contiguous.
"""

from __future__ import annotations

import math
import os
import shlex
import subprocess
import sys
from pathlib import Path


def hostnames() -> list[str]:
    nodelist = os.environ.get("SLURM_JOB_NODELIST") or os.environ.get("SLURM_NODELIST")
    if not nodelist:  # outside slurm (a dry run): this machine
        return [os.uname().nodename.split(".")[0]]
    # One host per element: the node list is a compressed range (node[01-04]); scontrol expands it.
    out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True, capture_output=True, text=True).stdout
    return out.split()


def env_int(name: str, default: int) -> int:
    value = os.environ.get(name, "")
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        sys.exit(f"plan.py: {name}={value!r} is not an integer")
    if number < 0:
        sys.exit(f"plan.py: {name}={value} must be >= 0")
    return number


def gpus_per_node() -> int:
    # SLURM_GPUS_ON_NODE is set when the job asked for GPUs (--gpus-per-node / --gres=gpu:N).
    return env_int("SLURM_GPUS_ON_NODE", 0)


def resolve_config(command: str, args: list[str]):
    """The command's own config, checked as the command checks it: a bad one ends the job here, before any rank
    starts, with the command's own message."""
    from apr_ds.cli import build_parser
    from apr_ds.config import config_from_args
    from apr_ds.errors import UserError
    parser = build_parser(command)
    parsed, rest = parser.parse_known_args([command, *args])
    extra = [a for a in rest if "=" in a and not a.startswith("-")]
    parsed.overrides = list(getattr(parsed, "overrides", []) or []) + extra
    try:
        return parsed, config_from_args(parsed)
    except UserError as e:
        sys.exit(f"apr-ds {command}: error: {e}")


def rl_layout(cfg, hosts: list[str], gpus: int) -> tuple[list[tuple[str, str, str]], int, int]:
    """[(host, role, GPU positions on that node or '')] per rank, and (L, R)."""
    rollout_gpus = gpus_per_server(cfg)
    if len(hosts) == 1:
        learners, rollouts = cfg.rl.learner_ranks, cfg.rl.rollout_ranks
        per_host = {hosts[0]: (learners, rollouts)}
        learner_hosts, rollout_hosts = hosts, hosts
    else:
        learner_per_node = env_int("APR_LEARNER_RANKS_PER_NODE", gpus or 1)
        rollout_per_node = env_int("APR_ROLLOUT_RANKS_PER_NODE", (gpus // rollout_gpus) if gpus else 1)
        if learner_per_node < 1 or rollout_per_node < 1:
            sys.exit(f"plan.py: need at least one rank per node: learner {learner_per_node}, rollout {rollout_per_node} "
                     f"({gpus} GPUs per node, {rollout_gpus} per server)")
        learner_nodes = env_int("APR_LEARNER_NODES", math.ceil(cfg.rl.learner_ranks / learner_per_node))
        if not 1 <= learner_nodes < len(hosts):
            sys.exit(f"plan.py: {learner_nodes} learner nodes out of {len(hosts)} leaves no rollout node (or no learner "
                     f"node); set APR_LEARNER_NODES between 1 and {len(hosts) - 1}")
        learner_hosts, rollout_hosts = hosts[:learner_nodes], hosts[learner_nodes:]
        per_host = {h: (learner_per_node, 0) for h in learner_hosts} | {h: (0, rollout_per_node) for h in rollout_hosts}
        learners, rollouts = learner_nodes * learner_per_node, len(rollout_hosts) * rollout_per_node
    roles = [(host, "learner") for host in learner_hosts for _ in range(per_host[host][0])]  # ranks 0..L-1
    roles += [(host, "rollout") for host in rollout_hosts for _ in range(per_host[host][1])]  # ranks L..L+R-1
    positions = gpu_positions(roles, gpus, rollout_gpus)
    ranks = [(host, role, positions[rank] if role == "rollout" else "") for rank, (host, role) in enumerate(roles)]
    return ranks, learners, rollouts


def gpus_per_server(cfg) -> int:
    """GPUs per rollout rank's server: APR_ROLLOUT_GPUS, else SGLang's --tp-size in rl.server_args (1 without)."""
    from apr_ds.cluster.placement import tp_size_from_server_args
    from apr_ds.errors import UserError
    try:
        tp_size = tp_size_from_server_args(cfg.rl.server_args)
    except UserError as e:
        sys.exit(f"plan.py: {e}")
    rollout_gpus = env_int("APR_ROLLOUT_GPUS", tp_size) or tp_size
    if rollout_gpus < tp_size:
        sys.exit(f"plan.py: APR_ROLLOUT_GPUS={rollout_gpus} gives each server fewer GPUs than --tp-size {tp_size} in "
                 f"rl.server_args needs; unset APR_ROLLOUT_GPUS (it follows --tp-size) or raise it")
    return rollout_gpus


def gpu_positions(roles: list[tuple[str, str]], gpus: int, per_server: int) -> list[str]:
    """Per rank, its GPUs as positions in its node's GPU list ("0,1"; '' without GPUs), by the same rule the
    launchers without slurm use (apr_ds/cluster/placement.py): learners first, then each server its own."""
    from apr_ds.cluster.placement import plan_node
    from apr_ds.errors import UserError
    positions = [""] * len(roles)
    for host in dict.fromkeys(host for host, _ in roles):
        on_host = [(rank, role) for rank, (h, role) in enumerate(roles) if h == host]
        try:
            plan = plan_node(on_host, tp_size=per_server, device_count=gpus, node=host)
        except UserError as e:
            sys.exit(f"plan.py: {e}")
        for rank, devices in plan.items():
            positions[rank] = ",".join(devices)
    return positions


def uniform_layout(hosts: list[str], gpus: int, role: str) -> list[tuple[str, str, str]]:
    default = gpus or env_int("SLURM_NTASKS_PER_NODE", 1)
    per_node = env_int("APR_RANKS_PER_NODE", default) or 1
    return [(host, role, "") for host in hosts for _ in range(per_node)]


def check_rl(cfg, learners: int, rollouts: int) -> None:
    """RL's rules that tie sections and rank counts together, on the layout this job will run (it may have more
    rollout ranks than the config asked for): refused here, before any srun step."""
    import dataclasses

    from apr_ds.errors import UserError
    laid_out = dataclasses.replace(cfg, rl=dataclasses.replace(cfg.rl, learner_ranks=learners, rollout_ranks=rollouts))
    try:
        laid_out.validate_rl()
    except UserError as e:
        sys.exit(f"apr-ds rl: error: {e}")


def main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("rl", "sft", "eval"):
        print(__doc__, file=sys.stderr)
        return 2
    command, out_dir, args = argv[0], Path(argv[1]), argv[2:]
    out_dir.mkdir(parents=True, exist_ok=True)
    parsed, cfg = resolve_config(command, args)
    hosts, gpus = hostnames(), gpus_per_node()
    overrides: list[str] = []
    assign = {"APR_RUN_DIR": cfg.run_dir, "APR_GPUS_PER_NODE": gpus}
    if command == "rl":
        ranks, learners, rollouts = rl_layout(cfg, hosts, gpus)
        if (learners, rollouts) != (cfg.rl.learner_ranks, cfg.rl.rollout_ranks):
            overrides = [f"rl.learner_ranks={learners}", f"rl.rollout_ranks={rollouts}"]
        check_rl(cfg, learners, rollouts)
        assign |= {"APR_LEARNER_RANKS": learners, "APR_ROLLOUT_RANKS": rollouts}
    elif command == "sft":
        ranks = uniform_layout(hosts, gpus, "learner")
    else:
        ranks = [(hosts[0], "eval", "")]
        assign |= {"APR_MAX_CONTEXT": cfg.rollout.max_context, "APR_EVAL_MODEL": parsed.model,
                   "APR_EVAL_URL": parsed.url or ""}
    (out_dir / "hostfile").write_text("".join(f"{host}\n" for host, _, _ in ranks))
    (out_dir / "ranks.tsv").write_text("".join(f"{i}\t{h}\t{role}\t{dev or '-'}\n" for i, (h, role, dev) in enumerate(ranks)))
    per_node = max(sum(1 for h, _, _ in ranks if h == host) for host in hosts)
    assign |= {"APR_NUM_RANKS": len(ranks), "APR_NUM_NODES": len({h for h, _, _ in ranks}), "APR_MAX_RANKS_PER_NODE": per_node}
    for key, value in assign.items():
        print(f"{key}={shlex.quote(str(value))}")
    print(f"APR_OVERRIDES=({' '.join(shlex.quote(o) for o in overrides)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
