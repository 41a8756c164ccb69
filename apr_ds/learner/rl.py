"""The learner side of `apr-ds rl`: GRPO on spawn/join trajectories with DeepSpeed ZeRO-3 (loss: loss.py).

Each step: take rl.prompts_per_step groups no staler than rl.max_staleness versions (older ones are
dropped and counted) -> split their sequences over the learner ranks, balanced by tokens -> proximal and
reference log-probs -> rl.ppo_epochs optimizer steps -> version + 1 -> announce the version to the
rollout ranks and broadcast the weights bucket by bucket -> log and checkpoint.

A rollout rank whose server died reports ServerDown, restarts it, then ServerBack. Learner rank 0 holds the
next sync until the server is back, rebuilds the weight group (Regroup) and sends the current version; if it
is waiting for trajectories meanwhile, it re-syncs at once (every learner joins that sync; no step is taken).
`groups.jsonl` lists the (rollout rank, group, version, requeued) of every step: the audit trail for that.
"""

from __future__ import annotations

import json
import math
import time
from collections import deque
from pathlib import Path

import numpy as np

from apr_ds.cluster.messages import (CONTROL, SERVER_STATUS, Go, Ready, Regroup, ServerBack, ServerDown, Setup, Stop,
                                 WeightUpdate)
from apr_ds.cluster.ports import reserve_port
from apr_ds.cluster.transport import balance, group_waiting, recv_group, scatter_shares
from apr_ds.errors import UserError
from apr_ds.log import ScalarWriter, get_logger

log = get_logger(__name__)


def as_sft_settings(rl, num_learners: int):
    """The engine builder takes the SFT section's shape; RL fills it: constant lr, its own micro-batch and clip.
    The accumulation count changes every step (set_train_batch_size), so the global batch here is nominal."""
    from apr_ds.config import SFTConfig
    return SFTConfig(ds_config=rl.ds_config, precision=rl.precision, micro_batch=rl.micro_batch,
                     global_batch=rl.micro_batch * num_learners,
                     steps=max(1, rl.steps * rl.ppo_epochs), lr=rl.lr, warmup_start_lr=rl.lr, warmup_steps=0, min_lr=rl.lr,
                     beta1=0.9, beta2=0.999, weight_decay=rl.weight_decay, grad_clip=rl.grad_clip, seed=rl.seed)


# ---------------------------------------------------------------------------- batches (learner rank 0)


class Batcher:
    """Learner rank 0's inbox: groups from every rollout rank, oldest version first, and the rollout ranks'
    server restarts (ServerDown / ServerBack)."""

    def __init__(self, world, timeout_s: float):
        self.world, self.timeout_s = world, timeout_s
        self.buffer: deque = deque()
        self.dropped_groups = 0
        self.consumed: dict[int, int] = {}
        self.sent_probes: dict[int, dict] = {}
        self.probes_checked = self.probe_mismatches = 0
        self.down: dict[int, str] = {}  # rollout index -> why its server died; restarting
        self.back: set[int] = set()  # restarted, healthy, waiting for a new weight group and the current weights
        self.server_restarts = self.requeued_groups = 0
        self.ready: dict[int, bool] = {}

    def _drain(self) -> None:
        while group_waiting(self.world):
            self._arrived(recv_group(self.world, self.timeout_s))

    def _arrived(self, group) -> None:
        probe = group[0].weight_probe
        if probe is not None and probe[0] in self.sent_probes:  # the server's weights after version v vs what we sent
            self.probes_checked += 1
            self.probe_mismatches += probe[1] != self.sent_probes[probe[0]]
        self.requeued_groups += group[0].requeued
        self.buffer.append(group)

    def poll_status(self) -> None:
        from mpi4py import MPI
        while self.world.Iprobe(source=MPI.ANY_SOURCE, tag=SERVER_STATUS):
            message = self.world.recv(source=MPI.ANY_SOURCE, tag=SERVER_STATUS)
            if isinstance(message, ServerDown):
                self.down[message.rollout_index] = message.reason
                self.server_restarts += 1
                log.warning(f"rollout rank {message.rollout_index}: server died ({message.reason}); it is restarting")
            elif isinstance(message, ServerBack):
                self.down.pop(message.rollout_index, None)
                self.back.add(message.rollout_index)
            elif isinstance(message, Ready):
                self.ready[message.rollout_index] = message.ok

    def _wait_until(self, done, failure) -> None:
        """Poll the rollout ranks' status (draining their groups meanwhile, so their sends complete) until
        `done()`; after rl.timeout_s raise UserError(failure())."""
        deadline = time.monotonic() + self.timeout_s
        self.poll_status()
        while not done():
            if time.monotonic() > deadline:
                raise UserError(failure())
            self._drain()
            time.sleep(0.002)
            self.poll_status()

    def all_ready(self, num_rollouts: int) -> bool:
        """Wait for every rollout rank's Ready to the WeightUpdate just sent; True if all servers can receive."""
        self._wait_until(lambda: len(self.ready) >= num_rollouts, lambda: (
            f"rollout rank(s) {sorted(set(range(num_rollouts)) - set(self.ready))} did not answer a weight update "
            f"within {self.timeout_s:.0f}s (rl.timeout_s)"))
        ready, self.ready = all(self.ready.values()), {}
        return ready

    def wait_for_a_restart(self) -> None:
        """A server was not ready: its rank reports ServerDown, then ServerBack. Wait for the report."""
        self._wait_until(lambda: self.down or self.back, lambda: (
            f"a rollout rank's server could not take a weight update and was not restarted within "
            f"{self.timeout_s:.0f}s (rl.timeout_s); see the server logs"))

    def _wait_for_group(self) -> bool:
        """Block until a group arrives (True) or a restarted server waits for its weights (False)."""
        deadline = time.monotonic() + self.timeout_s
        while not group_waiting(self.world):
            self.poll_status()
            if self.back:
                return False
            if time.monotonic() > deadline:
                raise TimeoutError(f"no trajectories from any rollout rank for {self.timeout_s:.0f}s")
            time.sleep(0.002)
        self._drain()
        return True

    def wait_for_restarts(self) -> None:
        """Before a weight sync: every server that died must be back (a broadcast to a dead member fails)."""
        self._wait_until(lambda: not self.down, lambda: (
            f"the server of rollout rank(s) {sorted(self.down)} did not come back within {self.timeout_s:.0f}s "
            f"(rl.timeout_s); see their server logs"))

    def take(self, count: int, version: int, max_staleness: int) -> tuple[list | None, float, list[int]]:
        """`count` groups usable at learner version `version`. Returns (groups, seconds waited, their staleness);
        groups is None when a restarted server needs the current weights first (the taken ones go back)."""
        waited, taken, staleness = 0.0, [], []
        self._drain()
        while len(taken) < count:
            if not self.buffer:
                started = time.perf_counter()
                arrived = self._wait_for_group()
                waited += time.perf_counter() - started
                if not arrived:
                    self.buffer.extend(taken)
                    return None, waited, []
                continue
            self.buffer = deque(sorted(self.buffer, key=lambda g: g[0].version))
            group = self.buffer.popleft()
            age = version - group[0].version
            if age > max_staleness:
                self.dropped_groups += 1
                continue
            taken.append(group)
            staleness.append(age)
        for header, *_ in taken:
            self.consumed[header.rollout_index] = self.consumed.get(header.rollout_index, 0) + 1
        return taken, waited, staleness


def build_shares(groups, num_learners: int, beta: float, advantage: str, line_penalty: float = 0.0,
                 wrong_tokens=None) -> tuple[list[dict], dict]:
    """Sequences with their per-token advantages, split over learners by tokens. Also returns how many sequences the
    loss is normalised by (`sequences`), how many of them the learners run (`trained_sequences`) and how many
    generated tokens the line penalty marked (`penalised_tokens`).

    A token's advantage is its program's, minus `line_penalty` on the wrong part of a wrong line (`wrong_tokens`,
    line_penalty.py). Without a KL term a sequence whose advantages are all 0 adds exactly 0 to the loss and to its
    gradient, in every PPO epoch, so it is left out of the learners' forward and backward passes but still counted in
    the normaliser: the update is the one the whole batch gives. Under A = R and no line penalty that is every failed
    program: 157 of the 670 counted sequences were trained on the cpu task's first RL step (docs/results.md,
    configuration 19). A group in which no sequence carries a gradient is dropped outright, normaliser included
    (APR's trainer drops it too)."""
    from apr_ds.learner.loss import advantages_for

    trained, normalising, penalised = [], 0, 0
    for header, tokens, logprobs, table in groups:
        advantages = advantages_for(header.rewards, advantage)
        per_program = np.bincount(table[:, 2], minlength=len(header.rewards))
        group, start, out = [], 0, 0
        for prompt_len, total_len, program in table:
            out_len = total_len - prompt_len
            ids = tokens[start:start + total_len]
            token_advantages = np.full(out_len, advantages[program], np.float32)
            if line_penalty:
                marks = wrong_tokens(ids, int(prompt_len))
                token_advantages -= line_penalty * marks
                penalised += int(marks.sum())
            group.append((ids, int(prompt_len), logprobs[out:out + out_len], token_advantages, int(per_program[program])))
            start += total_len
            out += out_len
        carries_gradient = [beta != 0 or bool(record[3].any()) for record in group]
        if any(carries_gradient):
            normalising += len(group)
            trained += [record for record, carries in zip(group, carries_gradient) if carries]
    shares = [_pack([trained[i] for i in idx]) for idx in balance([len(r[0]) for r in trained], num_learners)]
    for share in shares:
        share["num_sequences"] = normalising
    return shares, {"sequences": normalising, "trained_sequences": len(trained), "penalised_tokens": penalised}


def _pack(records) -> dict:
    return {"tokens": [r[0] for r in records], "prompt_lens": [r[1] for r in records], "behaviour": [r[2] for r in records],
            "advantages": [r[3] for r in records], "seqs_in_program": np.asarray([r[4] for r in records], np.float32)}


# ---------------------------------------------------------------------------- one step on every learner


def micro_batches(share: dict, micro: int, count: int) -> list[list[int]]:
    order = sorted(range(len(share["tokens"])), key=lambda i: len(share["tokens"][i]))  # similar lengths pad less
    batches = [order[i:i + micro] for i in range(0, len(order), micro)]
    return batches + [[] for _ in range(count - len(batches))]


def collate(share: dict, indices: list[int], pad_id: int, bos_id: int):
    """(input ids [B, L], targets [B, L-1], mask [B, L-1], behaviour log-probs [B, L-1], advantages [B, L-1]); an
    empty micro-batch becomes one masked dummy row so every rank still runs the same collectives."""
    import torch
    rows = [share["tokens"][i] for i in indices] or [np.asarray([bos_id, bos_id], np.int32)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), width - 1)
    behaviour = torch.zeros(len(rows), width - 1)
    advantages = torch.zeros(len(rows), width - 1)
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.from_numpy(np.asarray(row, np.int64))
        if indices:
            p = share["prompt_lens"][indices[b]]
            mask[b, p - 1:len(row) - 1] = 1.0
            behaviour[b, p - 1:len(row) - 1] = torch.from_numpy(np.asarray(share["behaviour"][indices[b]], np.float32))
            advantages[b, p - 1:len(row) - 1] = torch.from_numpy(share["advantages"][indices[b]])
    return ids, ids[:, 1:], mask, behaviour, advantages


def train_step(engine, ref_engine, share: dict, settings, rl, world_size: int, pad_id: int, bos_id: int) -> dict:
    import torch
    import torch.distributed as dist

    from apr_ds.learner.loss import grpo_loss, token_logprobs
    started = time.perf_counter()
    local = max(1, math.ceil(len(share["tokens"]) / rl.micro_batch))
    count = torch.tensor([local])
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    batches = micro_batches(share, rl.micro_batch, int(count))
    engine.set_train_batch_size(len(batches) * rl.micro_batch * world_size)
    device = engine.device
    fixed = []  # proximal and reference log-probs: fixed for all PPO epochs of this batch
    with torch.no_grad():
        for indices in batches:
            ids, targets, mask, behaviour, adv = collate(share, indices, pad_id, bos_id)
            ids, targets = ids.to(device), targets.to(device)
            prox = token_logprobs(engine(input_ids=ids).logits[:, :-1], targets, rl.temperature)
            ref = (token_logprobs(ref_engine(input_ids=ids).logits[:, :-1], targets, rl.temperature)
                   if ref_engine is not None else None)
            fixed.append((ids, targets, mask.to(device), behaviour.to(device), adv.to(device), prox, ref))
    totals: dict = {}
    for epoch in range(rl.ppo_epochs):
        for i, (indices, (ids, targets, mask, behaviour, adv, prox, ref)) in enumerate(zip(batches, fixed)):
            # DeepSpeed finds its boundary by counting micro-steps since the engine began, which only works while
            # every step has the same count; ours changes each step, so each epoch's end is named here
            engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
            logits = engine(input_ids=ids).logits[:, :-1]
            logp = token_logprobs(logits, targets, rl.temperature)
            sip = torch.as_tensor(share["seqs_in_program"][indices] if indices else np.ones(1, np.float32), device=device)
            loss, stats = grpo_loss(logp, prox, behaviour, ref, mask, adv, sip, max(1, share["num_sequences"]), settings)
            # ZeRO averages gradients over ranks; the loss is already normalised by the global sequence count
            engine.backward(loss * world_size, scale_wrt_gas=False)
            engine.step()
            if epoch == 0:
                with torch.no_grad():
                    probs = torch.softmax(logits.float() / rl.temperature, -1)
                    entropy = -(probs * torch.log(probs.clamp_min(1e-12))).sum(-1)
                    stats["entropy_sum"] = float((entropy * mask).sum())
                for key, value in stats.items():
                    weight = 1.0 if key in ("tokens", "entropy_sum") else stats["tokens"]
                    totals[key] = totals.get(key, 0.0) + value * weight
        totals[f"grad_norm_epoch{epoch}"] = float(engine.get_global_grad_norm() or 0.0)
    summed = torch.tensor([totals.get(k, 0.0) for k in ("tokens", "entropy_sum", "clip_fraction", "kl", "is_weight",
                                                       "behaviour_mismatch", "is_capped_fraction")], dtype=torch.float64)
    dist.all_reduce(summed)
    tokens = max(summed[0].item(), 1.0)
    return {"learner/tokens": tokens, "learner/seconds": time.perf_counter() - started,
            "loss/entropy": summed[1].item() / tokens, "loss/clip_fraction": summed[2].item() / tokens,
            "loss/kl": summed[3].item() / tokens, "loss/is_weight": summed[4].item() / tokens,
            "loss/behaviour_mismatch": summed[5].item() / tokens, "loss/is_capped_fraction": summed[6].item() / tokens,
            "loss/grad_norm": totals.get(f"grad_norm_epoch{rl.ppo_epochs - 1}", 0.0)}


# ---------------------------------------------------------------------------- rollout statistics


def rollout_scalars(groups, staleness: list[int], batcher: Batcher, waited_s: float, step_s: float) -> dict:
    programs = [p for header, *_ in groups for p in header.programs]
    latencies = [p.latency_s for p in programs]
    children = [c for p in programs for c in p.children]
    last = {}
    for header, *_ in groups:  # newest counters per rollout rank
        last[header.rollout_index] = header
    busy = sum(h.rollout_busy_s for h in last.values())
    idle = sum(h.rollout_idle_s for h in last.values())
    out_tokens = sum(h.num_output_tokens for h, *_ in groups)
    return {
        "rollout/reward": float(np.mean([r for h, *_ in groups for r in h.rewards])),
        "rollout/accuracy": float(np.mean([p.correct for p in programs])),
        "rollout/children_per_spawn": float(np.mean(children)) if children else 0.0,
        "rollout/spawns_per_program": float(np.mean([p.spawns for p in programs])),
        "rollout/threads_per_program": float(np.mean([p.threads for p in programs])),
        "rollout/total_tokens": float(np.mean([p.total_tokens for p in programs])),
        "rollout/sequential_tokens": float(np.mean([p.sequential_tokens for p in programs])),
        "rollout/latency_p50_s": float(np.percentile(latencies, 50)),
        "rollout/latency_p95_s": float(np.percentile(latencies, 95)),
        "rollout/generated_tokens": float(out_tokens),
        "rollout/idle_fraction": idle / max(busy + idle, 1e-9),
        "staleness/mean": float(np.mean(staleness)),
        "staleness/max": float(max(staleness)),
        "staleness/dropped_groups": float(batcher.dropped_groups),
        "faults/server_restarts": float(batcher.server_restarts),
        "faults/requeued_groups": float(batcher.requeued_groups),
        "sync/checked_versions": float(batcher.probes_checked),
        "sync/mismatched_versions": float(batcher.probe_mismatches),
        "learner/idle_fraction": waited_s / max(step_s, 1e-9),
    }


# ---------------------------------------------------------------------------- the loop


def run_learner(cfg, roles, model_dir: str, out: Path, resume: str) -> dict:
    from apr_ds.cluster.roles import export_learner_env
    from apr_ds.learner.engine import close_distributed, init_distributed, load_ds_config

    rl = cfg.rl
    export_learner_env(roles)
    settings = as_sft_settings(rl, roles.num_learners)
    ds_config = load_ds_config(settings, roles.num_learners)  # before any group exists: bad configs fail fast
    init_distributed()
    try:
        return _run(cfg, roles, model_dir, out, resume, ds_config, settings)
    finally:
        close_distributed()


def _build_engines(model_dir: str, settings, ds_config: dict, beta: float):
    import deepspeed

    from apr_ds.learner.engine import build_engine
    from apr_ds.model import load_hf
    model = load_hf(model_dir).train()
    engine = build_engine(model, settings, ds_config)
    ref_engine = None
    if beta > 0:  # frozen SFT policy, partitioned like the trainee, forward only (why: README, RL)
        reference = {k: v for k, v in ds_config.items() if k not in ("optimizer", "scheduler")}
        ref_engine, *_ = deepspeed.initialize(model=load_hf(model_dir), config=reference)
        ref_engine.eval()
    return engine, ref_engine


def _run(cfg, roles, model_dir, out, resume, ds_config, settings) -> dict:
    import torch.distributed as dist
    from tqdm import tqdm

    from apr_ds.config import save_config
    from apr_ds.data.tokenizer import tokenizer_sha256
    from apr_ds.cluster.roles import Roles  # noqa: F401  (type of `roles`)
    from apr_ds.cluster.placement import tp_size_from_server_args, weight_group_layout
    from apr_ds.cluster.weight_group import default_backend, init_weight_group
    from apr_ds.learner.checkpoint import load_checkpoint, resolve_resume, save_checkpoint
    from apr_ds.learner.loss import LossSettings
    from apr_ds.learner.weights import broadcast_weights, plan_metadata, probe_names, weight_plan

    rl, rank, world_size = cfg.rl, dist.get_rank(), dist.get_world_size()
    engine, ref_engine = _build_engines(model_dir, settings, ds_config, rl.beta)
    from transformers import AutoConfig, AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model_config = AutoConfig.from_pretrained(model_dir)
    sha = tokenizer_sha256(model_dir)
    tokenizer_dir = out / "tokenizer"
    if rank == 0:
        tokenizer.save_pretrained(str(tokenizer_dir))
    state = {"step": 0, "version": 0, "dropped_groups": 0, "consumed": {}}
    resume_path = resolve_resume(resume, out / "checkpoints")
    if resume_path is not None:
        state = load_checkpoint(engine, resume_path, world_size, sha)
        log.info(f"resumed from {resume_path} at step {state['step']} (weight version {state['version']})")
    version = state["version"]
    plan = weight_plan(engine, rl.bucket_mb * 2**20)
    group = None
    batcher = Batcher(roles.world, rl.timeout_s) if rank == 0 else None
    # every server rank joins: an SGLang server with --tp-size T takes T ranks of the group
    tp_size = tp_size_from_server_args(rl.server_args) if rl.server == "sglang" else 1
    group_size, offsets = weight_group_layout(roles.num_rollouts, tp_size)
    backend = default_backend()  # the learner's choice, sent to every server in Setup and Regroup
    if rank == 0:
        save_config(cfg, out)
        batcher.dropped_groups = state["dropped_groups"]
        # listening from now on, so the port cannot be taken before the store takes the socket over
        address, port = roles.host_address, reserve_port(roles.host_address)  # regroup() reuses address
        base, extra = divmod(rl.prompts_per_step, roles.num_rollouts)
        for index in range(roles.num_rollouts):
            quota = base + (index < extra)
            roles.world.send(Setup(address, port, group_size, version, version * quota, offsets[index], backend),
                             dest=roles.rollout_world_rank(index), tag=CONTROL)
        group = init_weight_group(address, port, rank=0, world_size=group_size, backend=backend, timeout_s=rl.timeout_s)
    writer = ScalarWriter(out / "tb", enabled=rank == 0)
    loss_settings = LossSettings(clip_eps=rl.clip_eps, beta=rl.beta, is_cap=rl.is_cap,
                                 token_sum_norm=float(cfg.rollout.max_context) if rl.loss_agg == "token_sum" else 0.0)

    probes = probe_names(plan)
    from apr_ds.learner.line_penalty import WrongTokens
    wrong_tokens = WrongTokens(tokenizer) if rl.line_penalty else None  # on every rank: a bad tokenizer stops them all

    def regroup() -> None:
        """A restarted server cannot rejoin the old group (a process group keeps its dead member): build a new one."""
        nonlocal group
        from apr_ds.cluster.weight_group import destroy_weight_group
        destroy_weight_group(group)
        port = reserve_port(address)
        for index in range(roles.num_rollouts):
            roles.world.send(Regroup(address, port, group_size, offsets[index], backend),
                             dest=roles.rollout_world_rank(index), tag=CONTROL)
        group = init_weight_group(address, port, rank=0, world_size=group_size, backend=backend, timeout_s=rl.timeout_s)
        log.info(f"weight group rebuilt for the restarted server(s) of rollout rank(s) {sorted(batcher.back)}")
        batcher.back.clear()

    def sync_weights() -> dict:
        started, attempt = time.perf_counter(), 0
        while True:
            proceed = True
            if rank == 0:
                batcher.wait_for_restarts()
                if batcher.back:
                    regroup()
                update = WeightUpdate(version, plan_metadata(plan), probes)
                for index in range(roles.num_rollouts):
                    roles.world.send(update, dest=roles.rollout_world_rank(index), tag=CONTROL)
                proceed = batcher.all_ready(roles.num_rollouts)
                for index in range(roles.num_rollouts):
                    roles.world.send(Go(proceed), dest=roles.rollout_world_rank(index), tag=CONTROL)
            try:  # every learner gathers (collective); only rank 0 broadcasts, and only if every server is ready
                sent, seen = broadcast_weights(plan, group, is_sender=rank == 0 and proceed, probes=probes)
            except RuntimeError as e:  # gloo/NCCL: a server died in the milliseconds since it said Ready
                raise UserError(f"weight sync of version {version} failed: a server of the weight group died or left "
                                f"({str(e).splitlines()[0]}); the last checkpoint is in {out / 'checkpoints'}") from None
            if roles.role_comm.bcast(proceed, root=0):
                break
            attempt += 1
            if rank == 0:
                log.warning(f"weight sync of version {version}: a server was not ready; waiting for its restart "
                            f"(attempt {attempt})")
                batcher.wait_for_a_restart()
        if rank == 0:
            batcher.sent_probes[version] = seen
        return {"sync/ms": 1000 * (time.perf_counter() - started), "sync/bytes": float(sent)}

    if resume_path is not None:
        sync_weights()  # servers start from the SFT weights; bring them to the resumed version
    metrics: dict = {}
    run_started = time.perf_counter()
    bar = tqdm(total=rl.steps, initial=state["step"], disable=rank != 0, desc=f"rl {rl.method}", unit="step", dynamic_ncols=True)
    for step in range(state["step"], rl.steps):
        step_started = time.perf_counter()
        shares, groups, staleness, waited, sequence_counts = None, None, None, 0.0, {}
        while True:
            if rank == 0:
                groups, waited_now, staleness = batcher.take(rl.prompts_per_step, version, rl.max_staleness)
                waited += waited_now
                shares, sequence_counts = (build_shares(groups, world_size, rl.beta, rl.advantage, rl.line_penalty,
                                                        wrong_tokens)
                                           if groups is not None else ([None] * world_size, {}))
            share = scatter_shares(roles.role_comm, shares)
            if share is not None:
                break
            sync_weights()  # a restarted server needs the current version before it generates again
        metrics = train_step(engine, ref_engine, share, loss_settings, rl, world_size, tokenizer.pad_token_id, tokenizer.bos_token_id)
        version += 1
        metrics.update(sync_weights())
        if rank == 0:
            metrics.update(rollout_scalars(groups, staleness, batcher, waited, time.perf_counter() - step_started))
            metrics.update({f"learner/{name}": float(value) for name, value in sequence_counts.items()})
            metrics["learner/tokens_per_s"] = metrics["learner/tokens"] / max(metrics["learner/seconds"], 1e-9)
            metrics["rollout/tokens_per_s"] = metrics["rollout/generated_tokens"] / max(time.perf_counter() - step_started, 1e-9)
            metrics["weights/version"] = float(version)
            metrics["time/elapsed_s"] = time.perf_counter() - run_started
            if (step + 1) % rl.log_every == 0 or step + 1 == rl.steps:
                writer.scalars(step + 1, metrics)
            with open(out / "groups.jsonl", "a") as f:  # which groups each step trained on: an audit trail
                f.write(json.dumps({"step": step + 1, "groups": [[h.rollout_index, h.group_index, h.version, h.requeued]
                                                                 for h, *_ in groups]}) + "\n")
            bar.set_postfix(reward=f"{metrics['rollout/reward']:.3f}", stale=f"{metrics['staleness/mean']:.1f}",
                            sync_ms=f"{metrics['sync/ms']:.0f}")
            bar.update(1)
        if (step + 1) % rl.save_every == 0 or step + 1 == rl.steps:
            trainer_state = {"step": step + 1, "version": version, "world_size": world_size, "tokenizer_sha256": sha,
                             "dropped_groups": batcher.dropped_groups if rank == 0 else 0,
                             "consumed": batcher.consumed if rank == 0 else {}}
            save_checkpoint(engine, out / "checkpoints", step + 1, trainer_state, model_config, tokenizer_dir, rl.keep_last)
    bar.close()
    if rank == 0:
        for index in range(roles.num_rollouts):
            roles.world.send(Stop("training finished"), dest=roles.rollout_world_rank(index), tag=CONTROL)
    export(engine, model_config, model_dir, out / "hf", rank)
    writer.close()
    return metrics


def export(engine, model_config, tokenizer_dir, out_dir: Path, rank: int) -> None:
    """The final policy as a Hugging Face directory, for `apr-ds eval`."""
    from apr_ds.learner.checkpoint import gather_state_dict
    from apr_ds.model import save_hf
    state_dict = gather_state_dict(engine)
    if rank == 0:
        save_hf(state_dict, model_config, out_dir, tokenizer_dir=tokenizer_dir)
        log.info(f"exported {out_dir}")
