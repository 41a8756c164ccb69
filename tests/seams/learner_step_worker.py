"""Worker of test_rl_learner_step.py, in its own process (a world of one: DeepSpeed's process group stays out of
pytest). Runs the learner's own train_step on real ZeRO-3 engines and prints what it measured as JSON.

`skip`: batches of A = R programs, some solved and some not, trained from the same initial weights once on every
sequence (what a run with a KL term sends: build_shares at beta > 0), once on what build_shares sends at beta 0
(the zero-advantage sequences left out), and once more on that smaller batch normalised by its own size (the
mistake the skip must not make). Prints the largest weight difference of each against the first.

`boundaries`: two train_steps of 3 and then 4 micro-batches on one engine. Prints at which engine.step() calls
the weights were updated: rl.ppo_epochs times per train_step, each at the end of an epoch, is the intent.

The client optimizer is plain SGD without gradient clipping, so an update is proportional to its gradient and a
wrong normaliser shows. Under AdamW (what `apr-ds rl` uses) a constant scale of the gradient barely changes an
update, which would let that mistake pass.
"""

import json
import sys
from types import SimpleNamespace

import numpy as np

from apr_ds.cluster.messages import TrajectoryGroup


SKIP_GROUPS = ([1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0])


def groups(vocab: int, rewards_by_group=SKIP_GROUPS, seed: int = 0) -> list:
    """One group per rewards list; program p has 1 + p % 2 calls (a parent, and a child on odd p) of random tokens."""
    rng = np.random.default_rng(seed)
    out = []
    for rewards in rewards_by_group:
        rows, tokens, behaviour = [], [], []
        for program in range(len(rewards)):
            for _ in range(1 + program % 2):
                prompt, total = int(rng.integers(3, 8)), int(rng.integers(12, 30))
                rows.append([prompt, total, program])
                tokens.append(rng.integers(3, vocab, total))
                behaviour.append(rng.uniform(-3.0, -0.5, total - prompt).astype(np.float32))
        behaviour = np.concatenate(behaviour)
        out.append(TrajectoryGroup(SimpleNamespace(rewards=rewards), np.concatenate(tokens).astype(np.int32),
                                   behaviour, np.asarray(rows), np.zeros_like(behaviour)))
    return out


def main(mode: str) -> None:
    import deepspeed
    import torch

    import dataclasses

    from apr_ds.config import RLConfig
    from apr_ds.learner.batch import build_shares
    from apr_ds.learner.checkpoint import gather_state_dict
    from apr_ds.learner.engine import init_distributed, load_ds_config
    from apr_ds.learner.grpo_step import train_step
    from apr_ds.learner.loss import LossSettings
    from apr_ds.model import build_model, config_for_preset

    vocab = 64
    rl = RLConfig(ppo_epochs=2, temperature=0.7, advantage="reward", beta=0.0)
    rl.deepspeed.micro_batch = 3
    ds_config = load_ds_config(rl.deepspeed, rl.optim, rl.deepspeed.micro_batch, 1, "rl")
    ds_config.update(gradient_clipping=0.0, zero_allow_untested_optimizer=True)
    init_distributed()

    def fresh_engine():
        model = build_model(config_for_preset("tiny", vocab, context=64), seed=0).train()
        engine, *_ = deepspeed.initialize(model=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.5),
                                          config=ds_config)
        return engine

    def train(engine, share) -> None:
        train_step(engine, None, share, LossSettings(beta=0.0), rl, pad_id=0, bos_id=1)

    if mode == "boundaries":
        engine, calls, updates = fresh_engine(), [0], []
        step = engine.step

        def recorded_step():  # the real step; note the calls at which DeepSpeed updated the weights
            before = engine.global_steps
            step()
            calls[0] += 1
            if engine.global_steps > before:
                updates.append(calls[0])
        engine.step = recorded_step
        for rewards_by_group in (([1, 0, 0, 1], [0, 1]), ([1, 0, 0, 1], [1, 0, 1, 0])):  # 9, then 12 sequences
            train(engine, build_shares(groups(vocab, rewards_by_group), 1, beta=1.0, advantage="reward")[0][0])
        print(json.dumps({"step_calls": calls[0], "updates_at": updates}))
        return

    def trained(share) -> dict:
        engine = fresh_engine()
        train(engine, share)
        return gather_state_dict(engine)

    batch = groups(vocab)
    whole, whole_counts = build_shares(batch, 1, beta=1.0, advantage="reward")
    skipped, skipped_counts = build_shares(batch, 1, beta=0.0, advantage="reward")
    renormalised = dataclasses.replace(skipped[0], num_sequences=skipped_counts.trained_sequences)
    initial = build_model(config_for_preset("tiny", vocab, context=64), seed=0).state_dict()
    reference = trained(whole[0])

    def largest_difference(state: dict) -> float:
        return max(float((state[k] - reference[k]).abs().max()) for k in reference)
    print(json.dumps({
        "whole": vars(whole_counts), "skipped": vars(skipped_counts),
        "moved": max(float((reference[k] - initial[k]).abs().max()) for k in reference),
        "skipped_vs_whole": largest_difference(trained(skipped[0])),
        "renormalised_vs_whole": largest_difference(trained(renormalised)),
    }))


if __name__ == "__main__":
    main(sys.argv[1])
