import random

from hypothesis import given, settings
from hypothesis import strategies as st

from apr_ds.config import SolverConfig, TaskConfig
from apr_ds.tasks.countdown import Problem, combine, heldout_targets, make_splits, problems_beyond_train, solve
from apr_ds.tasks.countdown_solvers import solve_apr, solve_sosp
from apr_ds.tasks.countdown_verify import verify
from apr_ds.tasks.task import problem_rng


def test_combine_follows_apr_rules():
    assert combine(3, 7) == [(10, "3+7=10"), (21, "3*7=21"), (4, "7-3=4")]
    assert combine(12, 4) == [(16, "12+4=16"), (48, "12*4=48"), (8, "12-4=8"), (3, "12/4=3")]
    assert (0, "5-5=0") in combine(5, 5) and (1, "5/5=1") in combine(5, 5)
    assert all("/" not in op for _, op in combine(0, 6))  # no division by zero
    assert all(result >= 0 for a in range(10) for b in range(10) for result, _ in combine(a, b))


def test_exhaustive_solver():
    assert solve(Problem((1, 1), 3)) is None
    ops = solve(Problem((22, 26, 31, 53), 27))
    assert ops is not None and len(ops) == 3
    assert solve(Problem((6, 3), 2)) == ["6/3=2"]
    assert solve(Problem((6, 3), 2), operators="+-*") is None  # only a division reaches 2
    assert solve(Problem((6, 2, 1), 3), operators="+-*") is not None


def _small_task(**kw):
    base = dict(num_numbers=3, min_number=1, max_number=15, min_target=10, max_target=30,
                num_train=300, num_val=40, num_test=40, num_test_unseen_targets=40, seed=3)
    base.update(kw)
    return TaskConfig(**base)


def test_splits_are_disjoint_solvable_and_hold_out_targets():
    cfg = _small_task()
    splits = make_splits(cfg, workers=1)
    assert {k: len(v) for k, v in splits.items()} == {"train": 300, "val": 40, "test": 40, "test_unseen_targets": 40}
    keys = [p.key for ps in splits.values() for p in ps]
    assert len(keys) == len(set(keys))
    held = heldout_targets(cfg.min_target, cfg.max_target, cfg.unseen_target_fraction, cfg.seed)
    assert len(held) == 3  # 10% of 21 targets, rounded up
    assert all(p.target in held for p in splits["test_unseen_targets"])
    assert all(p.target not in held for name in ("train", "val", "test") for p in splits[name])
    assert all(solve(p) is not None for ps in splits.values() for p in ps)
    assert all(cfg.min_number <= n <= cfg.max_number and len(p.nums) == 3 for ps in splits.values() for p in ps for n in p.nums)


def test_splits_do_not_depend_on_worker_count():
    cfg = _small_task(num_train=700)
    assert make_splits(cfg, workers=1, chunk=64) == make_splits(cfg, workers=2, chunk=64)


def test_growing_train_keeps_eval_splits():
    small, big = make_splits(_small_task(num_train=100)), make_splits(_small_task(num_train=400))
    assert small["test"] == big["test"] and small["val"] == big["val"]
    assert big["train"][:100] == small["train"]


def test_problems_beyond_train_are_new_and_the_same_on_every_call():
    cfg = _small_task(num_train=200)
    extra = problems_beyond_train(cfg, 60)
    assert len(extra) == 60 and len({p.key for p in extra}) == 60
    split_keys = {p.key for ps in make_splits(cfg).values() for p in ps}
    assert not split_keys & {p.key for p in extra}  # never in train, val, test or the unseen-target split
    assert all(p.target in range(cfg.min_target, cfg.max_target + 1) and solve(p) is not None for p in extra)
    assert problems_beyond_train(cfg, 60, workers=2) == extra
    assert problems_beyond_train(cfg, 20) == extra[:20]


def test_asking_for_more_problems_than_exist_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="only .* distinct problems exist"):
        make_splits(_small_task(max_number=6, num_train=5000), workers=1)


problems = st.builds(lambda nums, target: Problem(tuple(nums), target),
                     st.lists(st.integers(1, 30), min_size=3, max_size=4), st.integers(10, 40)).filter(lambda p: solve(p) is not None)


def _solved_output(problem, method, seed):
    cfg = SolverConfig(sosp_max_beam=5, apr_max_beam=6, apr_max_child_beam=10)
    for attempt in range(20):
        rng = problem_rng(seed, method, attempt)
        run = solve_sosp(problem, cfg, rng) if method == "sosp" else solve_apr(problem, cfg, rng)
        if run.solved:
            return run.main_calls[-1]
    return None


@settings(max_examples=60, deadline=None)
@given(problems, st.sampled_from(["sosp", "apr"]), st.integers(0, 10_000))
def test_every_solver_solution_verifies(problem, method, seed):
    out = _solved_output(problem, method, seed)
    if out is not None:
        verdict = verify(problem, out)
        assert verdict.ok, verdict.reason
        assert len(verdict.answer) == len(problem.nums) - 1


def _solution_number_spans(out, path):
    """Spans of every number in the solution path, except node-id labels (which name nodes, not values)."""
    import re
    spans, offset = [], out.index(path)
    for line in path.split("\n"):
        label_end = 0
        if line.startswith("Moving to Node #"):
            label_end = len(line)
        elif line.startswith("Generated Node #"):
            label_end = line.index(": ")
        spans += [(offset + m.start(), offset + m.end()) for m in re.finditer(r"\d+", line) if m.start() >= label_end]
        offset += len(line) + 1
    return spans


@settings(max_examples=40, deadline=None)
@given(problems, st.integers(0, 10_000), st.data())
def test_every_single_corruption_of_a_solution_fails(problem, seed, data):
    """Change any one number of the solution path (operands, results, states, target): the verifier must reject it."""
    from apr_ds.tasks.countdown_verify import extract_solution_path
    out = _solved_output(problem, data.draw(st.sampled_from(["sosp", "apr"])), seed)
    if out is None:
        return
    a, b = data.draw(st.sampled_from(_solution_number_spans(out, extract_solution_path(out))))
    new = data.draw(st.integers(0, 200).filter(lambda v: v != int(out[a:b])))
    corrupted = out[:a] + str(new) + out[b:]
    assert not verify(problem, corrupted).ok, (out[a - 30:b + 10], new)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.binary(), st.none(), st.integers()))
def test_verifier_never_raises(garbage):
    verdict = verify(Problem((1, 2, 3), 6), garbage)
    assert verdict.ok is False and verdict.reason


def test_verifier_reasons():
    p = Problem((2, 3, 4), 24)
    good = "x Goal Reached\nMoving to Node #0\nCurrent State: 24:[2, 3, 4], Operations: []\nExploring Operation: 2*3=6, Resulting Numbers: [4, 6]\nGenerated Node #0,0: 24:[4, 6] Operation: 2*3=6\nMoving to Node #0,0\nCurrent State: 24:[4, 6], Operations: ['2*3=6']\nExploring Operation: 4*6=24, Resulting Numbers: [24]\n24,24 equal: Goal Reached\n"
    assert verify(p, good).ok
    assert verify(p, good.encode()).ok
    assert "not available" in verify(p, good.replace("2*3=6", "2*5=10").replace("[4, 6]", "[4, 10]")).reason
    assert "arithmetic" in verify(p, good.replace("4*6=24", "4*6=25")).reason
    assert "fewer than two" in verify(p, good.split("Moving", 1)[1]).reason
    unused_one = "Goal Reached\nExploring Operation: 2*3=6, Resulting Numbers: [4, 1, 6]\nExploring Operation: 4*6=24, Resulting Numbers: [1, 24]\n24,24 equal: Goal Reached"
    assert "need [24]" in verify(Problem((2, 3, 4, 1), 24), unused_one).reason  # every number must be used
    assert not verify(p, good.replace("4*6=24, Resulting Numbers: [24]", "6-4=2, Resulting Numbers: [2]")).ok
    assert "larger first" in verify(Problem((2, 8, 3), 18), "Goal Reached\nExploring Operation: 2-8=6, Resulting Numbers: [3, 6]\n18,18 equal: Goal Reached").reason
    assert "not exact" in verify(Problem((7, 2, 3), 18), "Goal Reached\nExploring Operation: 7/2=3, Resulting Numbers: [3, 3]\n18,18 equal: Goal Reached").reason
