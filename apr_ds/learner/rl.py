"""The learner side of `apr-ds rl`: GRPO on spawn/join trajectories with DeepSpeed ZeRO-3. The loop is `train`.

    take groups (inbox.py) -> build the batch (batch.py) -> train step (grpo_step.py, loss.py)
    -> publish the new weights (apr_ds/weight_sync/publisher.py) -> log and checkpoint

Learner rank 0 takes rl.prompts_per_step groups no staler than rl.max_staleness versions, splits their sequences
over the learner ranks balanced by tokens and sends each its share; every rank trains, then every rank joins
the weight broadcast that brings the rollout ranks' servers to the new version. A restarted server interrupts
the wait for groups: the learners re-sync it at once, without taking a step. `groups.jsonl` lists the
(rollout rank, group, version, requeued) of every step: the audit trail for that.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apr_ds.log import ScalarWriter, get_logger

log = get_logger(__name__)


@dataclass
class RLRun:
    """What the loop works with, built once by `setup` (resumed or fresh)."""

    cfg: object
    roles: object
    model_dir: str
    out: Path
    engine: object
    ref_engine: object
    tokenizer: object
    model_config: object
    tokenizer_sha256: str
    publisher: object
    inbox: object
    """Learner rank 0's inbox of trajectory groups (None on the other learner ranks)."""
    writer: ScalarWriter
    loss_settings: object
    step: int
    version: int
    resumed: bool

    @property
    def is_root(self) -> bool:
        return self.inbox is not None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out / "checkpoints"


def run_learner(cfg, roles, model_dir: str, out: Path, resume: str) -> dict:
    from apr_ds.cluster.roles import export_learner_env
    from apr_ds.learner.engine import close_distributed, init_distributed, load_ds_config

    rl = cfg.rl
    export_learner_env(roles)
    # before any group exists: a bad DeepSpeed config fails fast. The global batch is nominal: the accumulation
    # count changes every step (set_train_batch_size)
    ds_config = load_ds_config(rl.deepspeed, rl.optim, rl.deepspeed.micro_batch * roles.num_learners,
                               roles.num_learners, "rl")
    init_distributed()
    try:
        return train(setup(cfg, roles, model_dir, out, resume, ds_config))
    finally:
        close_distributed()


def train(run: RLRun) -> dict:
    """The RL loop, on every learner rank."""
    from tqdm import tqdm

    from apr_ds.learner.grpo_step import train_step
    rl = run.cfg.rl
    if run.resumed:
        run.publisher.publish(run.version, run.checkpoint_dir)  # servers start from the SFT weights
    metrics: dict = {}
    run_started = time.perf_counter()
    bar = tqdm(total=rl.steps, initial=run.step, disable=not run.is_root, desc=f"rl {rl.method}", unit="step",
               dynamic_ncols=True)
    for step in range(run.step + 1, rl.steps + 1):
        step_started = time.perf_counter()
        share, taken, counts = next_batch(run)
        metrics = train_step(run.engine, run.ref_engine, share, run.loss_settings, rl,
                             run.tokenizer.pad_token_id, run.tokenizer.bos_token_id)
        run.step, run.version = step, run.version + 1
        metrics.update(run.publisher.publish(run.version, run.checkpoint_dir))
        if run.is_root:
            metrics.update(rollout_scalars(taken, time.perf_counter() - step_started))
            metrics.update(counter_scalars(run, taken, counts, metrics, step_started, run_started))
            log_step(run, metrics, taken)
            bar.set_postfix(reward=f"{metrics['rollout/reward']:.3f}", stale=f"{metrics['staleness/mean']:.1f}",
                            sync_ms=f"{metrics['sync/ms']:.0f}")
            bar.update(1)
        if step % rl.checkpoint.save_every == 0 or step == rl.steps:
            save(run)
    bar.close()
    run.publisher.stop("training finished")
    export(run)
    run.writer.close()
    return metrics


def next_batch(run: RLRun):
    """This rank's share of the next step's batch; on rank 0 also the groups taken and the batch's counts.
    While a restarted server waits for the current weights, re-sync it first (every learner joins)."""
    from apr_ds.cluster.transport import scatter_shares
    from apr_ds.learner.batch import build_shares
    rl, world_size = run.cfg.rl, run.roles.num_learners
    while True:
        shares = taken = counts = None
        if run.is_root:
            taken = run.inbox.take(rl.prompts_per_step, run.version, rl.max_staleness, run.publisher.servers_waiting)
            shares, counts = (build_shares(taken.groups, world_size, rl.beta, rl.advantage, rl.line_penalty)
                              if taken is not None else ([None] * world_size, None))
        share = scatter_shares(run.roles.role_comm, shares)
        if share is not None:
            return share, taken, counts
        run.publisher.publish(run.version, run.checkpoint_dir)


# ---------------------------------------------------------------------------- setup


def _build_engines(model_dir: str, rl, ds_config: dict):
    import deepspeed

    from apr_ds.learner.engine import build_engine
    from apr_ds.model import load_hf
    engine = build_engine(load_hf(model_dir).train(), rl.optim, rl.steps * rl.ppo_epochs, ds_config)
    ref_engine = None
    if rl.beta > 0:  # frozen SFT policy, partitioned like the trainee, forward only (why: README, RL)
        reference = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
        ref_engine, *_ = deepspeed.initialize(model=load_hf(model_dir), config=reference)
        ref_engine.eval()
    return engine, ref_engine


def setup(cfg, roles, model_dir: str, out: Path, resume: str, ds_config: dict) -> RLRun:
    """Engines, tokenizer, resume, the inbox and the weight publisher; the servers join the weight group."""
    import torch.distributed as dist
    from transformers import AutoConfig, AutoTokenizer

    from apr_ds.config import save_config
    from apr_ds.data.tokenizer import tokenizer_sha256
    from apr_ds.learner.checkpoint import load_checkpoint, resolve_resume
    from apr_ds.learner.inbox import Inbox
    from apr_ds.learner.loss import LossSettings
    from apr_ds.learner.weights import broadcast_weights, plan_metadata, probe_names, weight_plan
    from apr_ds.weight_sync.publisher import WeightPublisher

    rl, rank, world_size = cfg.rl, dist.get_rank(), dist.get_world_size()
    engine, ref_engine = _build_engines(model_dir, rl, ds_config)
    tokenizer, model_config, sha = (AutoTokenizer.from_pretrained(model_dir), AutoConfig.from_pretrained(model_dir),
                                    tokenizer_sha256(model_dir))
    state = {"step": 0, "version": 0, "dropped_groups": 0, "consumed": {}}
    resume_path = resolve_resume(resume, out / "checkpoints")
    if resume_path is not None:
        state = load_checkpoint(engine, resume_path, world_size, sha)
        log.info(f"resumed from {resume_path} at step {state['step']} (weight version {state['version']})")
    inbox = None
    if rank == 0:
        tokenizer.save_pretrained(str(out / "tokenizer"))
        save_config(cfg, out)
        inbox = Inbox(roles.world, rl.timeout_s, dropped_groups=state["dropped_groups"])
    plan = weight_plan(engine, rl.bucket_mb * 2**20)
    probes = probe_names(plan)
    publisher = WeightPublisher(roles, rl, plan_metadata(plan), probes,
                                lambda group, is_sender: broadcast_weights(plan, group, is_sender, probes),
                                drain=inbox.drain if inbox else lambda: None)
    if inbox is not None:
        inbox.on_arrival = lambda group: publisher.check_probe(group.header.weight_probe)
    publisher.connect(state["version"])
    loss_settings = LossSettings(clip_eps=rl.clip_eps, beta=rl.beta, is_cap=rl.is_cap,
                                 token_sum_norm=float(cfg.rollout.max_context) if rl.loss_agg == "token_sum" else 0.0)
    return RLRun(cfg, roles, model_dir, out, engine, ref_engine, tokenizer, model_config, sha, publisher, inbox,
                 ScalarWriter(out / "tb", enabled=rank == 0), loss_settings, state["step"], state["version"],
                 resumed=resume_path is not None)


# ---------------------------------------------------------------------------- logging, checkpoints, export


def rollout_scalars(taken, since_start_s: float) -> dict:
    headers = [group.header for group in taken.groups]
    programs = [p for h in headers for p in h.programs]
    latencies = [p.latency_s for p in programs]
    children = [c for p in programs for c in p.children]
    newest = {h.rollout_index: h for h in headers}  # cumulative counters: the newest per rollout rank
    busy = sum(h.rollout_busy_s for h in newest.values())
    idle = sum(h.rollout_idle_s for h in newest.values())
    out_tokens = sum(int(group.logprobs.size) for group in taken.groups)  # one log-prob per generated token
    return {
        "rollout/reward": float(np.mean([r for h in headers for r in h.rewards])),
        "rollout/accuracy": float(np.mean([p.correct for p in programs])),
        "rollout/children_per_spawn": float(np.mean(children)) if children else 0.0,
        "rollout/spawns_per_program": float(np.mean([p.spawns for p in programs])),
        "rollout/spawn_rate": float(np.mean([p.spawns > 0 for p in programs])),
        "rollout/threads_per_program": float(np.mean([p.threads for p in programs])),
        "rollout/total_tokens": float(np.mean([p.total_tokens for p in programs])),
        "rollout/sequential_tokens": float(np.mean([p.sequential_tokens for p in programs])),
        "rollout/acceleration": float(np.mean([p.acceleration for p in programs])),
        "rollout/latency_p50_s": float(np.percentile(latencies, 50)),
        "rollout/latency_p95_s": float(np.percentile(latencies, 95)),
        "rollout/generated_tokens": float(out_tokens),
        "rollout/tokens_per_s": out_tokens / max(since_start_s, 1e-9),
        "rollout/idle_fraction": idle / max(busy + idle, 1e-9),
        "staleness/mean": float(np.mean(taken.staleness)),
        "staleness/max": float(max(taken.staleness)),
    }


def counter_scalars(run: RLRun, taken, counts, metrics: dict, step_started: float, run_started: float) -> dict:
    now = time.perf_counter()
    return {"staleness/dropped_groups": float(run.inbox.dropped_groups),
            "faults/requeued_groups": float(run.inbox.requeued_groups),
            **run.publisher.scalars(),
            "learner/idle_fraction": taken.waited_s / max(now - step_started, 1e-9),
            **{f"learner/{name}": float(value) for name, value in vars(counts).items()},
            "learner/tokens_per_s": metrics["learner/tokens"] / max(metrics["learner/seconds"], 1e-9),
            "weights/version": float(run.version),
            "time/elapsed_s": now - run_started}


def log_step(run: RLRun, metrics: dict, taken) -> None:
    rl = run.cfg.rl
    if run.step % rl.log_every == 0 or run.step == rl.steps:
        run.writer.scalars(run.step, metrics)
    with open(run.out / "groups.jsonl", "a") as f:  # which groups each step trained on: an audit trail
        groups = [[g.header.rollout_index, g.header.group_index, g.header.version, g.header.requeued]
                  for g in taken.groups]
        f.write(json.dumps({"step": run.step, "groups": groups}) + "\n")


def save(run: RLRun) -> None:
    from apr_ds.learner.checkpoint import save_checkpoint
    trainer_state = {"step": run.step, "version": run.version, "world_size": run.roles.num_learners,
                     "tokenizer_sha256": run.tokenizer_sha256,
                     "dropped_groups": run.inbox.dropped_groups if run.is_root else 0,
                     "consumed": run.inbox.consumed if run.is_root else {}}
    save_checkpoint(run.engine, run.checkpoint_dir, run.step, trainer_state, run.model_config, run.out / "tokenizer",
                    run.cfg.rl.checkpoint.keep_last)


def export(run: RLRun) -> None:
    """The final policy as a Hugging Face directory, for `apr-ds eval`."""
    from apr_ds.learner.checkpoint import gather_state_dict
    from apr_ds.model import save_hf
    state_dict = gather_state_dict(run.engine)
    if run.is_root:
        save_hf(state_dict, run.model_config, run.out / "hf", tokenizer_dir=run.model_dir)
        log.info(f"exported {run.out / 'hf'}")
