"""GRPO for spawn/join programs (apr-reference §4), with decoupled-PPO off-policy correction. Pure torch.

A group is G programs (rollouts) of one prompt. Program r gets reward R_r in {0, 1} from the strict
verifier and advantage A_r = (R_r - mean(R)) / (std(R) + 1e-10), population std. Every generation call of
every thread of program r (parent calls and children alike) is a training sequence with advantage A_r:
one scalar outcome credits every thread, which is how parent and children are trained end to end.
(`rl.advantage=group_mean` uses A_r = R_r - mean(R), ThreadWeaver's; `rl.advantage=reward` A_r = R_r: REINFORCE
without a baseline.)

A token's advantage A_t is its program's A_r, less rl.line_penalty on the output tokens the rollout rank marked
as the wrong part of a checked trace line (batch.py, rollout/line_marks.py; 0 by default: the outcome alone, as APR). Per sequence s, over its generated tokens t only
(prompt tokens, including inserted join text, are masked):
    w_t     = min(exp(logp_prox - logp_behav), is_cap)        truncated importance weight (behaviour -> proximal)
    ratio_t = exp(logp - logp_prox)
    pg_t    = -w_t * min(ratio_t * A_t, clip(ratio_t, 1 - eps, 1 + eps) * A_t)
    kl_t    = min(exp(d) - d - 1, 10), d = clamp(ref - logp, ±20)   k3 estimator against the frozen SFT reference,
              capped per token as verl's low_var_kl: one token the policy has all but ruled out (ref/pi = e^15)
              otherwise outweighs the whole batch
where logp is the current policy (with gradient), logp_prox the learner's policy when this optimizer step
began (no gradient; recomputed by the learner), all three learner log-probs at the rollout temperature
(token_logprobs), and logp_behav the log-probs the inference server returned
when it sampled the tokens, possibly several weight versions ago. This is AReaL's decoupled PPO: the clip
acts around the proximal policy, and the stale behaviour policy only enters through the capped weight.

Averaging (as APR's trainer): the clipped term is a token mean per sequence, divided by the number of
sequences of its program; the KL term is a token mean per sequence; both are summed over sequences and
divided by the total number of sequences in the batch:
    loss = ( sum_s mean_t(pg) / n_seq(program of s) + beta * sum_s mean_t(kl) ) / N_sequences
With `token_sum_norm` = L > 0 (Dr. GRPO, Liu et al. 2025), mean_t(pg) becomes sum_t(pg) / L: under the token
mean, a failed thread's per-token penalty shrinks as it grows, which lengthens failures until the context
cuts them off; a constant L weighs every generated token the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from apr_ds.config import RL_ADVANTAGES


def group_advantages(rewards: list[float], eps: float = 1e-10) -> list[float]:
    """Group-normalised advantages with the population std (APR's trainer)."""
    r = torch.tensor(rewards, dtype=torch.float64)
    return ((r - r.mean()) / (r.std(unbiased=False) + eps)).tolist()


def advantages_for(rewards: list[float], kind: str) -> list[float]:
    """`group_norm`: GRPO's. `group_mean`: R - group mean, without the std (ThreadWeaver's: a small reward
    bonus keeps its small scale). `reward`: A = R, REINFORCE without a baseline. With a 0/1 reward only solved programs
    are pushed up and failed ones are left alone, so the update never pushes probability away from a failure onto
    tokens the policy has barely seen (on the cpu task, GRPO's updates drifted the per-line arithmetic: docs/results.md)."""
    if kind == "group_norm":
        return group_advantages(rewards)
    if kind == "group_mean":
        r = torch.tensor(rewards, dtype=torch.float64)
        return (r - r.mean()).tolist()
    if kind == "reward":
        return [float(r) for r in rewards]
    raise ValueError(f"unknown advantage {kind!r}; expected one of {RL_ADVANTAGES}")


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """log p(target_t | prefix) for logits [B, T, V] and targets [B, T], under softmax(logits / temperature).
    RL trains the policy it samples from: the server drew the tokens from the tempered distribution and
    returned their log-probs under it, so the learner's policy, proximal and reference log-probs are tempered
    alike (verl's actor divides by the rollout temperature too). At T 1 this is the plain log-softmax."""
    return torch.log_softmax(logits.float() / temperature, dim=-1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


KL_LOG_RATIO_CAP = 20.0
KL_TOKEN_CAP = 10.0


@dataclass
class LossSettings:
    clip_eps: float = 0.2
    beta: float = 0.0
    is_cap: float = 2.0
    token_sum_norm: float = 0.0
    """0: the policy term is each sequence's token mean; L > 0: its token sum over L."""


def grpo_loss(logp: torch.Tensor, logp_prox: torch.Tensor, logp_behav: torch.Tensor, ref_logp: torch.Tensor | None,
              mask: torch.Tensor, advantages: torch.Tensor, seqs_in_program: torch.Tensor, num_sequences: int,
              settings: LossSettings) -> tuple[torch.Tensor, dict]:
    """All per-token tensors, `advantages` included, are [B, T] aligned to the predicted tokens; `mask` is 1 on
    generated tokens. `seqs_in_program` is [B]. `num_sequences` is the batch's total over all micro-batches
    and ranks, so summing micro-batch losses gives the batch loss. Returns (loss, statistics)."""
    mask = mask.float()
    tokens = mask.sum(-1).clamp(min=1.0)
    weight = torch.exp(logp_prox - logp_behav).clamp(max=settings.is_cap).detach()
    ratio = torch.exp(logp - logp_prox)
    adv = advantages.to(logp.dtype)
    unclipped, clipped = ratio * adv, ratio.clamp(1 - settings.clip_eps, 1 + settings.clip_eps) * adv
    pg = -weight * torch.minimum(unclipped, clipped)
    per_sequence = settings.token_sum_norm if settings.token_sum_norm > 0 else tokens
    pg_seq = (pg * mask).sum(-1) / per_sequence / seqs_in_program.to(logp.dtype)
    loss = pg_seq.sum()
    kl_seq = torch.zeros_like(pg_seq)
    if ref_logp is not None:
        diff = (ref_logp - logp).clamp(-KL_LOG_RATIO_CAP, KL_LOG_RATIO_CAP)
        kl_seq = ((torch.exp(diff) - diff - 1).clamp(max=KL_TOKEN_CAP) * mask).sum(-1) / tokens
        if settings.beta:
            loss = loss + settings.beta * kl_seq.sum()
    n = mask.sum().clamp(min=1.0)
    with torch.no_grad():
        stats = {
            "clip_fraction": float(((unclipped != clipped).float() * mask).sum() / n),
            "kl": float(kl_seq.mean()) if ref_logp is not None else 0.0,
            "is_weight": float((weight * mask).sum() / n),
            "is_capped_fraction": float(((torch.exp(logp_prox - logp_behav) > settings.is_cap).float() * mask).sum() / n),
            "behaviour_mismatch": float(((logp_prox - logp_behav).abs() * mask).sum() / n),
            "tokens": float(mask.sum()),
        }
    return loss / num_sequences, stats
