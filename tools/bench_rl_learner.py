"""The RL learner's step under A = R at beta 0: before it skipped (every sequence of each group with a solved
program) against now (only the solved programs' sequences), side by side on one ZeRO-3 rank.

    python tools/bench_rl_learner.py --json runs/bench_rl_learner.json        # ~2 min on 2 cores
    python tools/bench_rl_learner.py --groups 32 --rounds 1                   # 32 x 8 a step, the shipped RL recipe's batch

Both sides run apr_ds.learner.grpo_step.train_step (proximal log-probs, then rl.ppo_epochs forward/backward/step) with
the `cpu` preset's model, micro-batch and temperature on the same synthetic batch, one thread. The batch is
shaped like the cpu task's rollouts (about 1,370 tokens per program): each program is a parent
call, three child calls and the parent's continuation, solved with probability --solved (the cpu task's training
reward is 0.08-0.17). Groups with no solved program are left out of both sides, as the learner already did before
it skipped. Both sides normalise by the same sequences, so they make the same update
(tests/seams/test_rl_learner_step.py). Rounds alternate the order of the two sides; the best round of each counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# (prompt tokens, generated tokens) ranges of one program's calls: parent, three children, the parent's continuation
CALLS = [((20, 30), (250, 400)), ((40, 80), (180, 330)), ((40, 80), (180, 330)), ((40, 80), (180, 330)),
         ((450, 650), (20, 80))]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--json", help="where to write the result")
    parser.add_argument("--groups", type=int, default=8, help="prompts per step (the cpu preset: 8)")
    parser.add_argument("--group-size", type=int, default=8)
    parser.add_argument("--solved", type=float, default=0.13, help="probability that a program is solved")
    parser.add_argument("--rounds", type=int, default=2)
    return parser.parse_args(argv)


def rollout_batch(args, vocab: int, seed: int = 0) -> list:
    rng = np.random.default_rng(seed)
    from apr_ds.cluster.messages import TrajectoryGroup
    groups = []
    for _ in range(args.groups):
        rewards = (rng.random(args.group_size) < args.solved).astype(int).tolist()
        rows, tokens, behaviour = [], [], []
        for program in range(args.group_size):
            for (p_low, p_high), (o_low, o_high) in CALLS:
                prompt, generated = int(rng.integers(p_low, p_high)), int(rng.integers(o_low, o_high))
                rows.append([prompt, prompt + generated, program])
                tokens.append(rng.integers(3, vocab, prompt + generated))
                behaviour.append(rng.uniform(-1.5, -0.01, generated).astype(np.float32))
        behaviour = np.concatenate(behaviour)
        groups.append(TrajectoryGroup(SimpleNamespace(rewards=rewards), np.concatenate(tokens).astype(np.int32),
                                      behaviour, np.asarray(rows), np.zeros_like(behaviour)))
    return groups


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from apr_ds.config import load_config
    from apr_ds.data.tokenizer import vocabulary
    from apr_ds.learner.engine import build_engine, init_distributed, load_ds_config
    from apr_ds.learner.loss import LossSettings
    from apr_ds.learner.batch import build_shares
    from apr_ds.learner.grpo_step import train_step
    from apr_ds.model import build_model, config_for_preset

    cfg = load_config("cpu", ["rl.advantage=reward", "rl.beta=0"])
    rl = cfg.rl
    ds_config = load_ds_config(rl.deepspeed, rl.optim, rl.deepspeed.micro_batch, 1, "rl")
    torch.set_num_threads(1)
    init_distributed()
    vocab = len(vocabulary())
    engine = build_engine(build_model(config_for_preset("cpu", vocab, cfg.rollout.max_context), seed=0), rl.optim,
                          rl.steps * rl.ppo_epochs, ds_config)
    groups = [group for group in rollout_batch(args, vocab) if any(group.header.rewards)]
    # build_shares at beta > 0 sends every sequence of these groups: the learner at beta 0 before it skipped
    before_share, before_counts = build_shares(groups, 1, 1.0, rl.advantage)
    skipped_share, skipped_counts = build_shares(groups, 1, 0.0, rl.advantage)
    sides = {"before": (before_share[0], before_counts), "skipped": (skipped_share[0], skipped_counts)}
    loss_settings = LossSettings(clip_eps=rl.clip_eps, beta=0.0, is_cap=rl.is_cap)

    def step(share) -> float:
        started = time.perf_counter()
        train_step(engine, None, share, loss_settings, rl, pad_id=0, bos_id=1)
        return time.perf_counter() - started

    step(skipped_share[0])  # warm-up: allocator and DeepSpeed's first-step work
    seconds: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        for name in (list(sides) if r % 2 == 0 else list(reversed(sides))):
            seconds[name].append(step(sides[name][0]))
            print(f"round {r + 1}: {name} {seconds[name][-1]:.1f} s", flush=True)
    best = {name: min(values) for name, values in seconds.items()}
    tokens = {name: int(sum(len(s.ids) for s in share.sequences)) for name, (share, _) in sides.items()}
    result = {
        "seconds_per_step": best, "speedup": best["before"] / best["skipped"],
        "sequences": {name: vars(counts) for name, (_, counts) in sides.items()}, "tokens": tokens,
        "solved_programs": int(sum(sum(g.header.rewards) for g in groups)), "programs": args.groups * args.group_size,
        "groups_with_a_solved_program": len(groups),
        "setup": {"model": "cpu preset", "ranks": "1 x 1 thread, ds_configs/zero3_cpu.json", "micro_batch": rl.deepspeed.micro_batch,
                  "ppo_epochs": rl.ppo_epochs, "temperature": rl.temperature, "groups": args.groups,
                  "group_size": args.group_size, "solved": args.solved},
        "rounds": seconds,
    }
    print(f"\n{'side':<10}{'trained sequences':>19}{'of':>6}{'tokens':>10}{'s/step':>9}")
    for name, (_, counts) in sides.items():
        print(f"{name:<10}{counts.trained_sequences:>19}{counts.sequences:>6}{tokens[name]:>10}{best[name]:>9.1f}")
    print(f"speedup {result['speedup']:.2f}x ({result['solved_programs']} of {result['programs']} programs solved, "
          f"{len(groups)} of {args.groups} groups with one)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
