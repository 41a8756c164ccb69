"""One RL step on every learner rank: this rank's share -> proximal and reference log-probs -> rl.ppo_epochs
optimizer steps (loss.py) -> the step's scalars, summed over ranks.

Every rank runs the same number of micro-batches (the shortest shares get empty ones): ZeRO-3 gathers parameters
collectively, so unequal counts would hang.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from apr_ds.learner.batch import Share, collate, micro_batches
from apr_ds.learner.loss import grpo_loss, token_logprobs

# scalars summed over tokens and ranks, then divided by the token count
TOKEN_MEANS = ("entropy", "clip_fraction", "kl", "is_weight", "behaviour_mismatch", "is_capped_fraction")


@dataclass
class MicroBatch:
    ids: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    behaviour: torch.Tensor
    advantages: torch.Tensor
    seqs_in_program: torch.Tensor
    proximal: torch.Tensor
    """The learner's log-probs when this step began: fixed for all PPO epochs of the batch."""
    reference: torch.Tensor | None
    """The frozen SFT model's log-probs (None without a KL term)."""


@torch.no_grad()
def prepare(engine, ref_engine, batches, temperature: float, pad_id: int, bos_id: int) -> list[MicroBatch]:
    prepared = []
    for sequences in batches:
        ids, targets, mask, behaviour, advantages, seqs_in_program = (
            t.to(engine.device) for t in collate(sequences, pad_id, bos_id))
        proximal = token_logprobs(engine(input_ids=ids).logits[:, :-1], targets, temperature)
        reference = (token_logprobs(ref_engine(input_ids=ids).logits[:, :-1], targets, temperature)
                     if ref_engine is not None else None)
        prepared.append(MicroBatch(ids, targets, mask, behaviour, advantages, seqs_in_program, proximal, reference))
    return prepared


def entropy_sum(logits: torch.Tensor, mask: torch.Tensor, temperature: float) -> float:
    with torch.no_grad():
        probs = torch.softmax(logits.float() / temperature, -1)
        return float((-(probs * torch.log(probs.clamp_min(1e-12))).sum(-1) * mask).sum())


def train_step(engine, ref_engine, share: Share, loss_settings, rl, pad_id: int, bos_id: int) -> dict:
    started, world_size = time.perf_counter(), dist.get_world_size()
    # on the engine's device: an NCCL group takes no CPU tensors
    count = torch.tensor([max(1, math.ceil(len(share.sequences) / rl.deepspeed.micro_batch))], device=engine.device)
    dist.all_reduce(count, op=dist.ReduceOp.MAX)
    batches = prepare(engine, ref_engine, micro_batches(share, rl.deepspeed.micro_batch, int(count)),
                      rl.temperature, pad_id, bos_id)
    engine.set_train_batch_size(len(batches) * rl.deepspeed.micro_batch * world_size)
    totals = dict.fromkeys(("tokens",) + TOKEN_MEANS, 0.0)
    grad_norm = 0.0
    for epoch in range(rl.ppo_epochs):
        for i, batch in enumerate(batches):
            # DeepSpeed finds its boundary by counting micro-steps since the engine began, which only works while
            # every step has the same count; ours changes each step, so each epoch's end is named here
            engine.set_gradient_accumulation_boundary(i == len(batches) - 1)
            logits = engine(input_ids=batch.ids).logits[:, :-1]
            logp = token_logprobs(logits, batch.targets, rl.temperature)
            loss, stats = grpo_loss(logp, batch.proximal, batch.behaviour, batch.reference, batch.mask,
                                    batch.advantages, batch.seqs_in_program, max(1, share.num_sequences),
                                    loss_settings)
            # ZeRO averages gradients over ranks; the loss is already normalised by the global sequence count
            engine.backward(loss * world_size, scale_wrt_gas=False)
            engine.step()
            if epoch == 0:
                stats["entropy"] = entropy_sum(logits, batch.mask, rl.temperature)  # a sum, not a token mean
                for key in totals:
                    totals[key] += stats[key] * (1.0 if key in ("tokens", "entropy") else stats["tokens"])
        grad_norm = float(engine.get_global_grad_norm() or 0.0)
    summed = torch.tensor(list(totals.values()), dtype=torch.float64, device=engine.device)
    dist.all_reduce(summed)
    tokens = max(summed[0].item(), 1.0)
    return {"learner/tokens": tokens, "learner/seconds": time.perf_counter() - started, "loss/grad_norm": grad_norm,
            **{f"loss/{key}": summed[i + 1].item() / tokens for i, key in enumerate(TOKEN_MEANS)}}
