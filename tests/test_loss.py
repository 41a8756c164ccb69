import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from apr_ds.learner.loss import LossSettings, advantages_for, group_advantages, grpo_loss, token_logprobs
from apr_ds.cluster.messages import TrajectoryGroup
from apr_ds.learner.batch import build_shares


def test_group_advantages_population_std():
    adv = group_advantages([1, 0, 0, 0, 1])
    mean, std = 0.4, math.sqrt(0.24)
    assert adv == pytest.approx([(1 - mean) / std, -mean / std, -mean / std, -mean / std, (1 - mean) / std])
    assert group_advantages([1, 1, 1]) == [0.0, 0.0, 0.0]  # no signal from a uniform group


def _group(rewards):
    """One group as the learner receives it: program p has one sequence of 3 prompt + 2 output tokens."""
    header = SimpleNamespace(rewards=rewards)
    table = np.asarray([[3, 5, p] for p in range(len(rewards))])
    tokens = np.arange(5 * len(rewards))
    return TrajectoryGroup(header, tokens, np.zeros(2 * len(rewards), np.float32), table,
                           np.zeros(2 * len(rewards), np.float32))


def _first_advantages(shares) -> list[float]:
    """Each trained sequence's advantage on its first generated token (every token's, without a line penalty)."""
    return [float(s.advantages[0]) for s in shares[0].sequences]


def test_reward_advantage_trains_only_on_solved_programs_and_keeps_an_all_solved_group():
    assert advantages_for([1, 0, 0, 1], "reward") == [1.0, 0.0, 0.0, 1.0]
    assert advantages_for([1, 0], "group_norm") == group_advantages([1, 0])
    # GRPO drops a uniform group (without a KL term); A = R keeps an all-solved one, whose programs still teach.
    shares, counts = build_shares([_group([1, 1]), _group([0, 1])], 1, 0.0, "reward")
    assert _first_advantages(shares) == [1.0, 1.0, 1.0]  # the failed program adds nothing: left out ...
    assert shares[0].num_sequences == 4 and vars(counts) == {"sequences": 4, "trained_sequences": 3,
                                                             "penalised_tokens": 0}  # ... yet counted
    shares, counts = build_shares([_group([1, 1]), _group([0, 1])], 1, 0.001, "reward")  # a KL term: every one trains
    assert _first_advantages(shares) == [1.0, 1.0, 0.0, 1.0] and counts.trained_sequences == 4
    shares, counts = build_shares([_group([1, 1]), _group([0, 1])], 1, 0.0, "group_norm")
    assert _first_advantages(shares) == pytest.approx([-1.0, 1.0])
    assert counts.sequences == 2 and counts.trained_sequences == 2  # the uniform group is out of the normaliser too
    # a shaped reward (the overlong penalty) can sit exactly on its group's mean: advantage 0, skipped, still counted
    shares, counts = build_shares([_group([1, 0, 0.5])], 1, 0.0, "group_norm")
    assert len(shares[0].sequences) == 2 and counts.sequences == 3 and counts.trained_sequences == 2
    with pytest.raises(ValueError, match="unknown advantage 'baseline'"):
        advantages_for([1, 0], "baseline")


def _batch(adv, logp=None, prox=None, behav=None, ref=None, mask=None):
    logp = torch.tensor(logp or [[-1.0, -2.0, -0.5]], requires_grad=True)
    prox = torch.tensor(prox or [[-1.0, -2.0, -0.5]])
    behav = torch.tensor(behav or [[-1.0, -2.0, -0.5]])
    ref = None if ref is None else torch.tensor(ref)
    mask = torch.tensor(mask or [[0.0, 1.0, 1.0]])
    return logp, prox, behav, ref, mask, torch.tensor(adv)[:, None].expand(mask.shape)


def test_on_policy_loss_is_minus_advantage_and_masks_the_prompt():
    logp, prox, behav, ref, mask, adv = _batch([2.0])
    loss, stats = grpo_loss(logp, prox, behav, ref, mask, adv, torch.tensor([1.0]), 1, LossSettings())
    assert abs(loss.item() + 2.0) < 1e-6  # ratio 1, weight 1: -A
    loss.backward()
    assert logp.grad[0, 0] == 0  # prompt token: no gradient
    assert torch.allclose(logp.grad[0, 1:], torch.tensor([-1.0, -1.0]))  # -A * ratio / tokens
    assert stats["clip_fraction"] == 0 and stats["is_weight"] == 1.0 and stats["tokens"] == 2


def test_clipping_stops_the_gradient_beyond_the_trust_region():
    logp, prox, behav, ref, mask, adv = _batch([1.0], logp=[[-1.0, -1.0, -1.0]], prox=[[-1.0, -1.5, -1.5]],
                                               behav=[[-1.0, -1.5, -1.5]])
    loss, stats = grpo_loss(logp, prox, behav, ref, mask, adv, torch.tensor([1.0]), 1, LossSettings(clip_eps=0.2))
    loss.backward()
    assert stats["clip_fraction"] == 1.0
    assert torch.all(logp.grad == 0)  # ratio e^0.5 > 1.2 with A > 0: clipped, no gradient


def test_stale_behaviour_is_weighted_and_capped():
    logp, prox, behav, ref, mask, adv = _batch([1.0], behav=[[-1.0, -5.0, -0.5]])
    loss, stats = grpo_loss(logp, prox, behav, ref, mask, adv, torch.tensor([1.0]), 1, LossSettings(is_cap=2.0))
    # token 1: weight min(e^3, 2) = 2; token 2: weight 1
    assert abs(loss.item() + (2.0 + 1.0) / 2) < 1e-6
    assert stats["is_capped_fraction"] == 0.5 and abs(stats["behaviour_mismatch"] - 1.5) < 1e-6


def test_k3_kl_against_the_reference():
    logp, prox, behav, _, mask, adv = _batch([0.0])
    ref = [[-1.0, -1.0, -0.5]]
    loss, stats = grpo_loss(logp, prox, behav, torch.tensor(ref), mask, adv, torch.tensor([1.0]), 1, LossSettings(beta=0.1))
    kl = (math.exp(1.0) - 1.0 - 1) / 2  # token 1: ref - logp = 1; token 2: 0
    assert abs(stats["kl"] - kl) < 1e-6 and abs(loss.item() - 0.1 * kl) < 1e-6


def test_sequences_of_one_program_share_its_weight():
    """A program with two sequences contributes as much policy-gradient as a program with one."""
    logp = torch.full((3, 2), -1.0, requires_grad=True)
    same = torch.full((3, 2), -1.0)
    mask = torch.ones(3, 2)
    adv = torch.ones(3, 2)
    seqs_in_program = torch.tensor([1.0, 2.0, 2.0])  # program A: seq 0; program B: seqs 1, 2
    loss, _ = grpo_loss(logp, same, same, None, mask, adv, seqs_in_program, 3, LossSettings())
    assert abs(loss.item() + (1.0 + 0.5 + 0.5) / 3) < 1e-6


def test_token_logprobs_match_log_softmax():
    logits = torch.randn(2, 4, 7)
    targets = torch.randint(0, 7, (2, 4))
    expected = torch.log_softmax(logits, -1)[torch.arange(2)[:, None], torch.arange(4)[None, :], targets]
    assert torch.allclose(token_logprobs(logits, targets), expected)
    tempered = torch.log_softmax(logits / 0.5, -1)[torch.arange(2)[:, None], torch.arange(4)[None, :], targets]
    assert torch.allclose(token_logprobs(logits, targets, 0.5), tempered)


def test_one_token_the_policy_ruled_out_cannot_dominate_the_kl():
    logp = torch.tensor([[-16.0, -1.0]], requires_grad=True)   # ref/pi = e^15 on token 1
    ref = torch.tensor([[-1.0, -1.0]])
    ones = torch.ones(1, 2)
    loss, stats = grpo_loss(logp, logp.detach(), logp.detach(), ref, ones, torch.zeros(1, 2), torch.ones(1), 1,
                            LossSettings(beta=1.0))
    assert stats["kl"] == pytest.approx(10.0 / 2)   # capped at 10 per token (uncapped: e^15 - 16 ~ 3.3e6)
    loss.backward()
    assert logp.grad.abs().max().item() < 1e-6      # the capped token pushes no gradient


def test_token_sum_weighs_every_token_alike_whatever_its_sequence_length():
    """Two failed threads (A < 0), one 1 token long and one 4: under the token mean each of the long thread's
    tokens gets a quarter of the short thread's push down; under token_sum both get 1/L."""
    logp = torch.full((2, 4), -1.0, requires_grad=True)
    same = torch.full((2, 4), -1.0)
    mask = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    adv, one = torch.full((2, 4), -1.0), torch.ones(2)
    mean_loss, _ = grpo_loss(logp, same, same, None, mask, adv, one, 2, LossSettings())
    mean_loss.backward()
    assert logp.grad[0, 0].item() == pytest.approx(4 * logp.grad[1, 0].item())
    logp.grad = None
    sum_loss, _ = grpo_loss(logp, same, same, None, mask, adv, one, 2, LossSettings(token_sum_norm=8.0))
    sum_loss.backward()
    assert torch.allclose(logp.grad[mask.bool()], torch.full((5,), 1.0 / 8 / 2))  # -A / L / N_sequences
    assert sum_loss.item() == pytest.approx((1 + 4) / 8 / 2)
