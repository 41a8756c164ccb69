"""Parallel-aware RL (ThreadWeaver): the critical-path bonus on hand-built trajectory trees, the mean-centred
advantage, and the acceleration / spawn-rate metrics in eval's summary (on a recorded eval file) and RL's scalars."""

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from apr_ds.cluster.messages import GroupHeader
from apr_ds.config import ConfigError, RLConfig, load_config
from apr_ds.eval.metrics import summarize
from apr_ds.learner.loss import advantages_for
from apr_ds.learner.rl import rollout_scalars
from apr_ds.rollout.rank import program_reward, program_stats
from apr_ds.rollout.trajectory import Segment, Thread, Trajectory
from apr_ds.tasks import get_task

RECORDED = Path(__file__).parent / "data" / "apr_trajectories.jsonl"
THREADWEAVER = RLConfig(critical_path_weight=0.5, critical_path_cap=0.2)


def seg(prompt, output, finish="stop"):
    return Segment(list(prompt), list(output), [0.0] * len(output), finish, "v1", 0, 0.0, 1.0)


def sequential_program(correct=True) -> Trajectory:
    root = Thread(0, None, 0, "p", [seg(range(10), range(100, 120))], status="done")
    return Trajectory({"nums": [1, 2], "target": 3}, "apr", [root], correct=correct)


def three_children(correct=True, root_status="done") -> Trajectory:
    """The root writes 30 tokens and spawns three children (20, 30 and 40 tokens), then resumes on its first
    30 tokens + a 6-token join and writes 4 more: total 130, sequential 30 + 40 + 10 = 80."""
    context = list(range(10)) + list(range(100, 120))
    resumed = seg(context + list(range(900, 906)), range(200, 204), "length" if root_status == "truncated" else "stop")
    root = Thread(0, None, 0, "p", [seg(range(10), range(100, 120)), resumed], spawns=[[1, 2, 3]], status=root_status)
    children = [Thread(i, 0, 1, "c", [seg(range(300, 305), range(400, 400 + n))], status="done")
                for i, n in ((1, 15), (2, 25), (3, 35))]
    return Trajectory({"nums": [1, 2], "target": 3}, "apr", [root, *children], correct=correct)


def test_acceleration_is_total_over_sequential_tokens():
    assert sequential_program().acceleration() == 1.0
    t = three_children()
    assert (t.total_tokens(), t.sequential_tokens()) == (130, 80)
    assert t.acceleration() == 130 / 80
    assert Trajectory({}, "apr", [Thread(0, None, 0, "p")]).acceleration() == 1.0  # no tokens at all


def test_the_bonus_is_off_by_default():
    assert RLConfig().critical_path_weight == 0.0
    assert program_reward(three_children(), RLConfig(), 768) == 1.0


def test_a_correct_program_without_spawns_earns_no_bonus():
    assert program_reward(sequential_program(), THREADWEAVER, 768) == 1.0


def test_a_correct_program_with_three_children_earns_the_capped_bonus():
    assert program_reward(three_children(), THREADWEAVER, 768) == pytest.approx(1.0 + 0.5 * 0.2)
    uncapped = RLConfig(critical_path_weight=0.5, critical_path_cap=1.0)  # acceleration - 1 = 0.625 < 1
    assert program_reward(three_children(), uncapped, 768) == pytest.approx(1.0 + 0.5 * 0.625)


def test_a_failed_program_earns_no_bonus_however_parallel():
    assert program_reward(three_children(correct=False), THREADWEAVER, 768) == 0.0
    assert program_reward(sequential_program(correct=False), THREADWEAVER, 768) == 0.0


def test_a_program_whose_parent_was_truncated_earns_no_bonus():
    # the runtime verifies only a root that finished, so a truncated root's program is never correct
    truncated = three_children(correct=False, root_status="truncated")
    assert truncated.acceleration() > 1
    assert program_reward(truncated, THREADWEAVER, 768) == 0.0


def test_the_bonus_and_the_overlong_penalty_add_up():
    rl = RLConfig(critical_path_weight=0.5, overlong_buffer=20, overlong_penalty=1.0)
    assert program_reward(three_children(), rl, 56) == pytest.approx(1.0 + 0.1 - 0.2)  # longest thread 40: 4 into 20


@pytest.mark.parametrize("override", ["rl.critical_path_weight=-0.5", "rl.critical_path_cap=0"])
def test_the_bonus_settings_are_range_checked(override):
    with pytest.raises(ConfigError, match=override.split("=")[0]):
        load_config("tiny", [override])


def test_group_mean_advantages_centre_without_scaling():
    assert advantages_for([1.1, 1.0, 0.0, 0.0], "group_mean") == pytest.approx([0.575, 0.475, -0.525, -0.525])
    # two solves that differ only by the bonus: the std would make the gap as large as a solve's
    assert advantages_for([1.1, 1.0], "group_mean") == pytest.approx([0.05, -0.05])
    assert advantages_for([1.1, 1.0], "group_norm") == pytest.approx([1.0, -1.0])


def test_rl_scalars_report_acceleration_and_spawn_rate():
    programs = [program_stats(t) for t in (sequential_program(), three_children(), three_children(correct=False))]
    header = GroupHeader(0, 0, 0, [1.0, 1.1, 0.0], programs)
    taken = SimpleNamespace(groups=[SimpleNamespace(header=header, logprobs=np.zeros(1))], staleness=[0])
    scalars = rollout_scalars(taken, 1.0)
    assert scalars["rollout/acceleration"] == pytest.approx((1 + 2 * 130 / 80) / 3)
    assert scalars["rollout/spawn_rate"] == pytest.approx(2 / 3)
    assert scalars["rollout/children_per_spawn"] == 3.0


# ---------------------------------------------------------------------------- a recorded eval file


def _recorded() -> tuple[list[dict], list[Trajectory]]:
    """Six programs of `apr-ds eval --preset cpu --model checkpoints/cpu/apr_rl --method apr eval.temperatures=[0.7]`
    (run_dir from `apr-ds data --preset cpu task.num_train=2000`): solved, failed, truncated and spawn-less ones."""
    records = [json.loads(line) for line in RECORDED.read_text().splitlines()]
    programs = [{k: v for k, v in r.items() if k not in ("temperature", "budget")} for r in records]
    return records, [Trajectory.from_json(p) for p in programs]


def _new_tokens(segments: list[dict]) -> int:
    total, seen = 0, []
    for s in segments:
        shared = 0
        while shared < min(len(s["prompt_ids"]), len(seen)) and s["prompt_ids"][shared] == seen[shared]:
            shared += 1
        total += len(s["prompt_ids"]) + len(s["output_ids"]) - shared
        seen = s["prompt_ids"] + s["output_ids"]
    return total


def _critical_path(threads: list[dict], thread_id: int) -> int:
    thread = threads[thread_id]
    longest_children = [max(_critical_path(threads, child) for child in spawn) for spawn in thread["spawns"]]
    return _new_tokens(thread["segments"]) + sum(longest_children)


def test_summary_metrics_match_the_recorded_thread_structure():
    records, trajectories = _recorded()
    kinds = {(t.correct, t.root.status, t.num_spawns > 0) for t in trajectories}
    assert {(True, "done", True), (False, "done", True), (False, "truncated", True), (False, "failed", False)} <= kinds
    accelerations, spawned, children = [], [], []
    for r in records:
        threads = r["threads"]
        accelerations.append(sum(_new_tokens(t["segments"]) for t in threads) / _critical_path(threads, 0))
        spawned.append(any(t["spawns"] for t in threads))
        children += [len(spawn) for t in threads for spawn in t["spawns"]]
    summary = summarize(trajectories, [768], get_task(load_config("cpu")))
    assert summary["mean_acceleration"] == pytest.approx(sum(accelerations) / len(records))
    assert summary["spawn_rate"] == pytest.approx(sum(spawned) / len(records))
    assert summary["children_per_spawn"] == pytest.approx(sum(children) / len(children))
    assert 1 < summary["mean_acceleration"] and 0 < summary["spawn_rate"] < 1
