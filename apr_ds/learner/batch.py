"""A step's groups -> per-token advantages -> one share per learner rank -> padded micro-batches.

A token's advantage is its program's (loss.advantages_for), minus rl.line_penalty on the output tokens the
rollout rank marked as lying in the wrong part of a checked trace line (rollout/line_marks.py). Without a KL term
a sequence whose advantages are all 0 adds exactly 0 to the loss and to its gradient, in every PPO epoch, so it
is left out of the learners' forward and backward passes but still counted in the normaliser: the update is the
one the whole batch gives (under A = R that is every failed program). A group in which no sequence carries a
gradient is dropped outright, normaliser included (APR's trainer drops it too).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from apr_ds.cluster.messages import TrajectoryGroup
from apr_ds.cluster.transport import balance


@dataclass
class Sequence:
    """One generation call as the learner trains on it."""

    ids: np.ndarray
    """Prompt ids then output ids."""
    prompt_len: int
    behaviour: np.ndarray
    """The sampling server's log-probs of the output ids."""
    advantages: np.ndarray
    """One per output id."""
    seqs_in_program: int
    """Sequences of the program it belongs to (the loss weighs each program equally)."""


@dataclass
class Share:
    """One learner rank's sequences of a step."""

    sequences: list[Sequence] = field(default_factory=list)
    num_sequences: int = 0
    """Sequences the loss is normalised by, over every learner (the same on every share)."""


@dataclass
class BatchCounts:
    sequences: int = 0
    """Counted in the loss normaliser."""
    trained_sequences: int = 0
    """Run forward and backward (those carrying a gradient)."""
    penalised_tokens: int = 0
    """Output tokens whose advantage the line penalty lowered."""


def group_sequences(group: TrajectoryGroup, advantage: str, line_penalty: float) -> list[Sequence]:
    from apr_ds.learner.loss import advantages_for
    advantages = advantages_for(group.header.rewards, advantage)
    per_program = np.bincount(group.sequences[:, 2], minlength=len(group.header.rewards))
    out, start, out_start = [], 0, 0
    for prompt_len, total_len, program in group.sequences:
        out_len = int(total_len - prompt_len)
        token_advantages = np.full(out_len, advantages[program], np.float32)
        if line_penalty:
            token_advantages -= line_penalty * group.line_marks[out_start:out_start + out_len]
        out.append(Sequence(group.tokens[start:start + total_len], int(prompt_len),
                            group.logprobs[out_start:out_start + out_len], token_advantages, int(per_program[program])))
        start += total_len
        out_start += out_len
    return out


def build_shares(groups: list[TrajectoryGroup], num_learners: int, beta: float, advantage: str,
                 line_penalty: float = 0.0) -> tuple[list[Share], BatchCounts]:
    """The step's sequences with their advantages, split over the learners balanced by tokens."""
    trained, counts = [], BatchCounts()
    for group in groups:
        sequences = group_sequences(group, advantage, line_penalty)
        if line_penalty:
            counts.penalised_tokens += int(group.line_marks.sum())
        carries_gradient = [beta != 0 or bool(s.advantages.any()) for s in sequences]
        if any(carries_gradient):
            counts.sequences += len(sequences)
            trained += [s for s, carries in zip(sequences, carries_gradient) if carries]
    counts.trained_sequences = len(trained)
    parts = balance([len(s.ids) for s in trained], num_learners)
    return [Share([trained[i] for i in part], counts.sequences) for part in parts], counts


def micro_batches(share: Share, micro: int, count: int) -> list[list[Sequence]]:
    """`count` micro-batches (every rank runs the same number: ZeRO-3's gathers are collective); similar lengths
    together pad less; the missing ones are empty."""
    ordered = sorted(share.sequences, key=lambda s: len(s.ids))
    batches = [ordered[i:i + micro] for i in range(0, len(ordered), micro)]
    return batches + [[] for _ in range(count - len(batches))]


def collate(sequences: list[Sequence], pad_id: int, bos_id: int):
    """(input ids [B, L], targets [B, L-1], mask [B, L-1], behaviour log-probs [B, L-1], advantages [B, L-1],
    sequences per program [B]); an empty micro-batch becomes one masked dummy row so every rank still runs the
    same collectives."""
    import torch
    rows = [s.ids for s in sequences] or [np.asarray([bos_id, bos_id], np.int32)]
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask, behaviour, advantages = (torch.zeros(len(rows), width - 1) for _ in range(3))
    for b, row in enumerate(rows):
        ids[b, :len(row)] = torch.from_numpy(np.asarray(row, np.int64))
    for b, s in enumerate(sequences):
        span = slice(s.prompt_len - 1, len(s.ids) - 1)
        mask[b, span] = 1.0
        behaviour[b, span] = torch.from_numpy(np.asarray(s.behaviour, np.float32))
        advantages[b, span] = torch.from_numpy(np.asarray(s.advantages, np.float32))
    seqs_in_program = torch.tensor([float(s.seqs_in_program) for s in sequences] or [1.0])
    return ids, ids[:, 1:], mask, behaviour, advantages, seqs_in_program
