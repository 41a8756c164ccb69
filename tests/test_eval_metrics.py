"""The metric formulas on hand-built trajectory trees (formulas: apr_ds/rollout/trajectory.py)."""

from apr_ds.config import load_config
from apr_ds.eval.metrics import cons_at_n, cumulative_accuracy, pass_at_n, summarize
from apr_ds.rollout.trajectory import Segment, Thread, Trajectory
from apr_ds.tasks import get_task

TASK = get_task(load_config("tiny"))


def seg(prompt, output):
    return Segment(list(prompt), list(output), [0.0] * len(output), "stop", "v1", 0, 0.0, 1.0)


def tree():
    # main thread: prompt 10 tokens, generates 20 (ends with a spawn), resumes with the first 25 tokens of
    # that context + a 5-token join (prompt 30), generates 8 more.
    first = seg(range(10), range(100, 120))
    context = list(range(10)) + list(range(100, 120))
    resumed = seg(context[:25] + [900, 901, 902, 903, 904], range(200, 208))
    root = Thread(0, None, 0, "p", [first, resumed], spawns=[[1, 2]], status="done")
    child_a = Thread(1, 0, 1, "a", [seg(range(300, 306), range(400, 440))], status="done")   # 6 + 40
    child_b = Thread(2, 0, 1, "b", [seg(range(500, 504), range(600, 610))], status="done")   # 4 + 10
    return Trajectory({"nums": [1, 2], "target": 3}, "apr", [root, child_a, child_b], correct=True, start=5.0, end=7.5)


def test_total_tokens_count_shared_parent_prefixes_once():
    t = tree()
    assert t.root.new_tokens() == [30, 13]    # second call: 30 + 8 - 25 shared
    assert t.total_tokens() == 30 + 13 + 46 + 14


def test_sequential_tokens_follow_the_critical_path():
    t = tree()
    assert t.sequential_tokens() == 30 + 13 + max(46, 14)
    assert t.sequential_tokens(2) == 14


def test_longest_thread_spawns_and_latency():
    t = tree()
    assert t.longest_thread() == 46
    assert t.num_spawns == 1 and t.children_per_spawn() == [2]
    assert t.latency_s == 2.5
    assert Trajectory.from_json(t.to_json()) == t


def test_cumulative_accuracy_by_window():
    a, b = tree(), tree()
    b.correct = False
    assert cumulative_accuracy([a, b], [40, 46, 100]) == {40: 0.0, 46: 0.5, 100: 0.5}
    s = summarize([a, b], [46], TASK)
    assert s["accuracy"] == 0.5 and s["mean_total_tokens"] == 103 and s["children_per_spawn"] == 2
    assert s["cumulative_accuracy"] == {"46": 0.5}


def _answer(text, correct):
    t = Trajectory({}, "sosp", [Thread(0, None, 0, "p", [], text=text, status="done")], correct=correct)
    return t


PATH = ("x Goal Reached\nMoving to Node #0\nCurrent State: 6:[1, 2, 3], Operations: []\n"
        "Exploring Operation: {a}, Resulting Numbers: [3, 3]\nGenerated Node #0,0: 6:[3, 3] Operation: {a}\n"
        "Moving to Node #0,0\nCurrent State: 6:[3, 3], Operations: ['{a}']\nExploring Operation: {b}, Resulting Numbers: [6]\n"
        "6,6 equal: Goal Reached\n")


def test_pass_and_cons_at_n():
    right = _answer(PATH.format(a="1+2=3", b="3+3=6"), True)
    wrong = _answer(PATH.format(a="1*2=2", b="3+3=7"), False)
    nothing = _answer("No solution found.", False)
    assert TASK.claimed_answer(right.root.text) == ("1+2=3", "3+3=6") and TASK.claimed_answer("No solution found.") is None
    assert pass_at_n([wrong, right]) and not pass_at_n([wrong, nothing])
    assert cons_at_n([wrong, right, right], TASK) and not cons_at_n([wrong, wrong, right], TASK)
    assert cons_at_n([nothing, nothing, right], TASK)  # samples without a claimed path do not vote
    assert not cons_at_n([wrong, right], TASK)  # a tie goes to the earliest sample
    assert not cons_at_n([nothing], TASK)
