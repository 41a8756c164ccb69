"""Metrics over trajectories (formulas in `apr_ds.rollout.trajectory`), pass@n and cons@n."""

from __future__ import annotations

from collections import Counter

import numpy as np

from apr_ds.rollout.trajectory import Trajectory


def pass_at_n(samples: list[Trajectory]) -> bool:
    """At least one of the n samples is correct (an upper bound)."""
    return any(t.correct for t in samples)


def cons_at_n(samples: list[Trajectory], task) -> bool:
    """Self-consistency: drop samples that claim no solution, majority-vote over the solutions they claim
    (`task.claimed_answer`; ties go to the earliest sample), and score the winner with the strict verifier."""
    claims = [(task.claimed_answer(t.root.text), t) for t in samples if t.root.status == "done"]
    claims = [(answer, t) for answer, t in claims if answer]
    if not claims:
        return False
    votes = Counter(answer for answer, _ in claims)
    best = max(votes.values())
    winner = next(answer for answer, _ in claims if votes[answer] == best)
    return next(t for answer, t in claims if answer == winner).correct


def solved_within(trajectory: Trajectory, window: int | None) -> bool:
    """Correct, with every thread's context within the window (None: any length)."""
    return trajectory.correct and (window is None or trajectory.longest_thread() <= window)


def cumulative_accuracy(trajectories: list[Trajectory], windows: list[int]) -> dict[int, float]:
    """Accuracy when a program counts only if it is correct and its longest thread fits in W (paper Fig. 4b)."""
    n = max(len(trajectories), 1)
    return {w: sum(solved_within(t, w) for t in trajectories) / n for w in windows}


def by_problem(runs: list, samples: int) -> list[list]:
    """Eval runs a problem's n samples one after another: split its programs back into one group per problem."""
    return [runs[i:i + samples] for i in range(0, len(runs), samples)]


def _mean(values) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def summarize(trajectories: list[Trajectory], windows: list[int], task) -> dict:
    """Aggregate one setting's trajectories (one per problem); `lines` holds the task's per-line diagnostics."""
    latencies = [t.latency_s for t in trajectories]
    children = [c for t in trajectories for c in t.children_per_spawn()]
    return {
        "problems": len(trajectories),
        "accuracy": _mean([t.correct for t in trajectories]),
        "mean_total_tokens": _mean([t.total_tokens() for t in trajectories]),
        "mean_sequential_tokens": _mean([t.sequential_tokens() for t in trajectories]),
        "mean_acceleration": _mean([t.acceleration() for t in trajectories]),
        "mean_longest_thread": _mean([t.longest_thread() for t in trajectories]),
        "mean_latency_s": _mean(latencies),
        "p50_latency_s": float(np.percentile(latencies, 50)) if latencies else 0.0,
        "p95_latency_s": float(np.percentile(latencies, 95)) if latencies else 0.0,
        "spawns_per_program": _mean([t.num_spawns for t in trajectories]),
        "spawn_rate": _mean([t.num_spawns > 0 for t in trajectories]),
        "children_per_spawn": _mean(children),
        "threads_per_program": _mean([len(t.threads) for t in trajectories]),
        "cumulative_accuracy": {str(w): a for w, a in cumulative_accuracy(trajectories, windows).items()},
        "failures": dict(Counter(t.reason for t in trajectories if not t.correct).most_common(8)),
        "lines": task.line_diagnostics(thread.text for t in trajectories for thread in t.threads),
    }
