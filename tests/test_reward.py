"""The RL reward of one program: APR's binary reward, and DAPO's soft overlong punishment on top."""

from apr_ds.config import RLConfig
from apr_ds.rollout.rank import program_reward
from apr_ds.rollout.trajectory import Segment, Thread, Trajectory


def program(correct: bool, *contexts: tuple[int, int]) -> Trajectory:
    """A program with one thread per (prompt, output) length pair."""
    threads = []
    for i, (prompt, output) in enumerate(contexts):
        segment = Segment(list(range(prompt)), [5] * output, [-0.1] * output, "stop", "0", 0, 0.0, 1.0)
        threads.append(Thread(i, None if i == 0 else 0, int(i > 0), "p", [segment]))
    return Trajectory({"nums": [1, 2], "target": 3}, "apr", threads, correct=correct)


def test_without_a_buffer_the_reward_is_the_verifiers_verdict():
    rl = RLConfig()
    assert program_reward(program(True, (20, 748)), rl, 768) == 1.0
    assert program_reward(program(False, (20, 100)), rl, 768) == 0.0


def test_the_overlong_penalty_grows_linearly_over_the_buffer_with_the_longest_thread():
    rl = RLConfig(overlong_buffer=128, overlong_penalty=1.0)
    assert program_reward(program(True, (20, 600), (30, 100)), rl, 768) == 1.0        # 620 < 640: no penalty
    assert program_reward(program(True, (20, 100), (40, 664)), rl, 768) == 0.5        # a child at 704: halfway
    assert program_reward(program(False, (20, 748)), rl, 768) == -1.0                 # cut by the window
    rl.overlong_penalty = 0.5
    assert program_reward(program(False, (20, 684)), rl, 768) == -0.25
