"""`apr-ds rl`: asynchronous GRPO with DeepSpeed ZeRO-3 learner ranks and separate rollout ranks.

One machine (re-launches itself under the venv's mpiexec with rl.learner_ranks + rl.rollout_ranks ranks):
    apr-ds rl --preset tiny
    apr-ds rl --preset tiny rl.learner_ranks=2 rl.rollout_ranks=2 rl.max_staleness=0
Any launcher that starts one MPI world runs the same entry point unchanged (roles by rank):
    .venv/bin/mpirun -n 2 .venv/bin/python -m apr_ds.cli rl --preset tiny
    srun --mpi=pmi2 -n 4 python -m apr_ds.cli rl --preset paper rl.learner_ranks=2 rl.rollout_ranks=2
    deepspeed --hostfile hosts --launcher openmpi --no_local_rank --module apr_ds.cli rl --preset paper ...

Reads `{run_dir}/data/problems/train.jsonl` and the SFT model (`rl.init_model`, default
`{run_dir}/sft/{rl.method}/hf`); writes `{run_dir}/rl/`: tb/ (TensorBoard), scalars.jsonl, checkpoints/,
server logs, hf/ (the final policy, for `apr-ds eval`). `--resume auto` continues from the newest checkpoint.
A rank that fails ends the whole job with its message (MPI abort); every server process dies with its rank.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

from apr_ds.errors import UserError
from apr_ds.model import check_weights


def add_arguments(parser) -> None:
    from apr_ds.config import add_config_arguments
    add_config_arguments(parser)
    parser.add_argument("--resume", default="auto", help="auto (newest complete checkpoint, else fresh), none, or a path")


def init_model_dir(cfg) -> str:
    return cfg.rl.init_model or str(Path(cfg.run_dir) / "sft" / cfg.rl.method / "hf")


def validate(cfg) -> None:
    """Everything `apr-ds rl` can check before any rank starts: the config's RL rules (its sections' own ranges were
    checked when it loaded), then what they name on this machine (the SFT model, the problems, SGLang)."""
    cfg.validate_rl()
    rl = cfg.rl
    if rl.server == "sglang":
        _check_sglang(rl.sglang_python)
    model = Path(init_model_dir(cfg))
    if not (model / "config.json").is_file():
        raise UserError(f"no SFT model at {model} (rl.init_model); train one with `apr-ds sft sft.method={rl.method}`")
    _check_context(cfg.rollout.max_context, model / "config.json")
    check_weights(model)
    problems = Path(cfg.run_dir) / "data" / "problems" / "train.jsonl"
    if not problems.is_file():
        raise UserError(f"no training problems at {problems}; run `apr-ds data` for this run_dir")
    if rl.line_penalty:  # the rollout ranks' check, here rather than once every server has started
        from transformers import AutoTokenizer

        from apr_ds.rollout.line_marks import LineMarks
        from apr_ds.tasks import get_task
        LineMarks(AutoTokenizer.from_pretrained(str(model)), get_task(cfg))


def _check_sglang(configured: str) -> None:
    """Found here, before any rank starts, rather than as a server that dies at its first import."""
    from apr_ds.rollout.server_proc import has_sglang, resolve_sglang_python
    python = resolve_sglang_python(configured)
    if not python:
        raise UserError("rl.server=sglang, but this Python cannot import sglang and rl.sglang_python is not set: install "
                        "it here (`pip install -e .[sglang]` on a GPU node), or on a CPU machine build its venv with "
                        "`make sglang` (then it is found) or point rl.sglang_python at an interpreter that has it")
    if not has_sglang(python):
        raise UserError(f"rl.sglang_python={python!r} cannot import sglang (or does not exist); on a CPU machine build "
                        f"SGLang's venv with `make sglang` and use .venv-sglang/bin/python")


def _check_context(max_context: int, model_config: Path) -> None:
    """Found here, before any rank starts, rather than as a rollout server that refuses to start."""
    try:
        positions = json.loads(model_config.read_text())["max_position_embeddings"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{model_config} is not a readable Llama config ({type(e).__name__}: {e})") from None
    if not isinstance(positions, int):
        raise UserError(f"{model_config} is not a readable Llama config (max_position_embeddings is {positions!r})")
    if max_context > positions:
        raise UserError(f"rollout.max_context={max_context} exceeds the SFT model's max_position_embeddings={positions} "
                        f"({model_config}); lower rollout.max_context")


def _stop(signum, frame) -> None:
    raise KeyboardInterrupt


def main(args) -> int:
    from apr_ds.config import config_from_args
    from apr_ds.cluster.roles import in_mpi_world, mpiexec_command

    cfg = config_from_args(args)
    validate(cfg)
    if not in_mpi_world():
        command = mpiexec_command(cfg.rl.learner_ranks + cfg.rl.rollout_ranks, sys.argv[1:])
        env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
        print(f"apr-ds rl: starting {cfg.rl.learner_ranks} learner + {cfg.rl.rollout_ranks} rollout ranks: {' '.join(command)}",
              flush=True)
        proc = subprocess.Popen(command, env=env)
        signal.signal(signal.SIGTERM, _stop)  # `kill PID` must stop the ranks and their servers too, not orphan them
        resume = f"run the same command again to resume from the newest checkpoint in {Path(cfg.run_dir) / 'rl' / 'checkpoints'}"
        try:
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait()
            print(f"apr-ds rl: stopped; {resume}", file=sys.stderr, flush=True)
            return 130
        if code:
            print(f"apr-ds rl: the job failed (exit code {code}; the failing rank's message is above); {resume}",
                  file=sys.stderr, flush=True)
        return code
    return run_rank(cfg, args.resume)


def finish(roles) -> None:
    """The last barrier, while learner rank 0 receives (and drops) groups still in flight: a rollout rank only
    gets here once its sends to rank 0 are done, and a send past MPI's eager size completes only when received."""
    from mpi4py import MPI

    from apr_ds.cluster.transport import group_waiting, recv_group
    request = MPI.COMM_WORLD.Ibarrier()
    while not request.Test():
        while roles.rank == 0 and group_waiting(roles.world):
            recv_group(roles.world, timeout_s=60)
        time.sleep(0.002)


def run_rank(cfg, resume: str) -> int:
    from mpi4py import MPI

    from apr_ds.cluster.roles import assign_roles
    try:
        roles = assign_roles(cfg.rl.learner_ranks, cfg.rl.rollout_ranks)
    except UserError:  # every rank finds the same mismatch, so all leave cleanly (no Abort to lose the message)
        reports = MPI.COMM_WORLD.Get_rank() == 0
        MPI.Finalize()
        if reports:
            raise  # the CLI prints it, as it does every bad input
        return 2
    try:
        cpus = cfg.rl.learner_cpus if roles.is_learner else cfg.rl.rollout_cpus
        if cpus:  # children (the inference server) inherit the affinity
            os.sched_setaffinity(0, cpus)
        out = Path(cfg.run_dir) / "rl"
        out.mkdir(parents=True, exist_ok=True)
        if roles.is_learner:
            from apr_ds.learner.rl import run_learner
            run_learner(cfg, roles, init_model_dir(cfg), out, resume)
        else:
            from apr_ds.rollout.rank import run_rollout
            run_rollout(cfg, roles, init_model_dir(cfg), out)
        finish(roles)
    except BaseException as e:  # one rank's failure ends the job, with its message, instead of hanging the others
        who = f"rank {roles.rank}" + (" (learner)" if roles.is_learner else " (rollout)")
        if isinstance(e, UserError):
            print(f"apr-ds rl: {who}: error: {e}", file=sys.stderr, flush=True)
        else:
            print(f"apr-ds rl: {who} failed:\n{traceback.format_exc()}", file=sys.stderr, flush=True)
        time.sleep(1.0)  # MPI_Abort tears down the process manager, which drops stderr it has not yet forwarded
        MPI.COMM_WORLD.Abort(1)
        return 1
    # Every rank has written and closed everything. Leave now: DeepSpeed's CPU shared-memory collective can hang
    # in interpreter teardown on non-zero learner ranks, and the process manager then reports the job as killed.
    # MPI_Finalize first: Open MPI's mpirun reports a rank that exits without it as failed (MPICH does not care).
    MPI.Finalize()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
