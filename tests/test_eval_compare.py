"""`apr-ds compare`: two eval runs paired problem by problem, from files in `apr-ds eval`'s own formats."""

import json
import subprocess

import pytest

from apr_ds.eval.compare import sign_test_p
from apr_ds.rollout.trajectory import Segment, Thread, Trajectory


def _trajectory(problem, correct, context_len):
    segment = Segment(prompt_ids=[1] * 10, output_ids=[2] * (context_len - 10), logprobs=[0.0] * (context_len - 10),
                      finish_reason="stop", weight_version="0", cached_tokens=0, start=0.0, end=1.0)
    thread = Thread(thread_id=0, parent_id=None, depth=0, prompt="p", segments=[segment], status="done")
    return Trajectory(problem=problem, method="apr", threads=[thread], correct=correct)


def _write_run(path, outcomes, temperature=0.0, split="test", first_target=10):
    """outcomes: per problem, one (correct, longest thread) per sample; eval writes a problem's samples in a row."""
    samples = len(outcomes[0])
    with open(path.with_name(path.stem + ".trajectories.jsonl"), "w") as f:
        for index, problem_samples in enumerate(outcomes):
            problem = {"nums": [index, 2, 3, 4], "target": first_target + index}
            for correct, length in problem_samples:
                f.write(json.dumps({**_trajectory(problem, correct, length).to_json(),
                                    "temperature": temperature, "budget": None}) + "\n")
    setting = {"temperature": temperature, "budget": None, "n": samples, "problems": len(outcomes)}
    path.write_text(json.dumps({"method": "apr", "model": "m", "split": split, "settings": [setting]}))
    return path


def _greedy(*outcomes):
    return [[outcome] for outcome in outcomes]


@pytest.fixture
def compare(apr_ds_cli):
    def run(*args):
        return subprocess.run([*apr_ds_cli, "compare", *map(str, args)], capture_output=True, text=True, timeout=120)
    return run


def _rows(stdout):
    return [line.split() for line in stdout.splitlines() if line.split()[:1] in (["0.0"], ["0.7"])]


def test_sign_test_matches_the_binomial_tail():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert sign_test_p(3, 3) == 1.0
    assert sign_test_p(40, 24) == sign_test_p(24, 40) == pytest.approx(0.0602, abs=5e-4)


def test_counts_problems_per_window(tmp_path, compare):
    # problem:   0             1             2             3              4             5
    a = _greedy((True, 400), (True, 700), (True, 700), (False, 300), (True, 512), (False, 300))
    b = _greedy((True, 400), (False, 300), (True, 400), (True, 700), (False, 300), (False, 300))
    proc = compare(_write_run(tmp_path / "a.json", a), _write_run(tmp_path / "b.json", b), "--windows", 512, 768)
    assert proc.returncode == 0, proc.stderr
    rows = _rows(proc.stdout)
    # at 512: A solves 0 and 4 (exactly 512 fits), B solves 0 and 2; at 768 everything solved counts
    assert rows[0][4:] == ["512", "6", "33.3%", "33.3%", "1", "1", "1", "1.000"]
    assert rows[1][4:] == ["768", "6", "66.7%", "50.0%", "2", "2", "1", "1.000"]


def test_best_of_n_is_paired_on_its_first_sample_whatever_the_settings(tmp_path, compare):
    # best-of-3 at T 0.7 where only a later sample solves each problem, against greedy that solves all four
    bon = _write_run(tmp_path / "bon.json", [[(False, 300), (True, 300), (True, 300)]] * 4, temperature=0.7)
    greedy = _write_run(tmp_path / "greedy.json", _greedy(*[(True, 300)] * 4))
    proc = compare(greedy, str(bon).replace(".json", ".trajectories.jsonl"))
    assert proc.returncode == 0, proc.stderr
    row = _rows(proc.stdout)[0]
    assert row[:2] == ["0.0", "None"] and row[2:4] == ["0.7", "None"]
    assert row[4:] == ["-", "4", "100.0%", "0.0%", "0", "4", "0", "0.125"]


def test_pools_pairs_on_problems_of_their_own(tmp_path, compare):
    # the same two models on two splits: the pooled row sums the pairs' counts and tests the summed discordants
    a1 = _write_run(tmp_path / "a1.json", _greedy((True, 300), (True, 300), (False, 300)))
    b1 = _write_run(tmp_path / "b1.json", _greedy((False, 300), (True, 300), (False, 300)))
    a2 = _write_run(tmp_path / "a2.json", _greedy((True, 300), (False, 300), (False, 300), (True, 300)), first_target=100)
    b2 = _write_run(tmp_path / "b2.json", _greedy((False, 300), (False, 300), (True, 300), (False, 300)), first_target=100)
    proc = compare(a1, b1, a2, b2, "--windows", 256, 512, 256)  # a window given twice counts once
    assert proc.returncode == 0, proc.stderr
    rows = [row[4:] for row in _rows(proc.stdout)]
    nothing_fits = ["0.0%", "0.0%", "0", "0", "0", "1.000"]
    assert rows == [["256", "3", *nothing_fits], ["512", "3", "66.7%", "33.3%", "1", "1", "0", "1.000"],
                    ["256", "4", *nothing_fits], ["512", "4", "50.0%", "25.0%", "0", "2", "1", "1.000"],
                    ["256", "7", *nothing_fits], ["512", "7", "57.1%", "28.6%", "1", "3", "1", f"{sign_test_p(3, 1):.3f}"]]
    assert "pooled over the 2 pairs above (7 problems" in proc.stdout


def test_refuses_to_pool_pairs_run_at_different_settings(tmp_path, compare):
    greedy = [_write_run(tmp_path / f"{x}.json", _greedy((True, 300), (False, 300))) for x in "ab"]
    sampled = [_write_run(tmp_path / f"{x}.json", _greedy((True, 300), (False, 300)), temperature=0.7, first_target=100)
               for x in "cd"]
    proc = compare(*greedy, *sampled)
    assert proc.returncode == 2 and "share no (temperature, budget) settings to pool" in proc.stderr
    assert "(0.0, None)" in proc.stderr and "(0.7, None)" in proc.stderr and proc.stdout == ""


def test_refuses_to_pool_the_same_problems_twice_or_an_unpaired_run(tmp_path, compare):
    a = _write_run(tmp_path / "a.json", _greedy((True, 300), (False, 300)))
    b = _write_run(tmp_path / "b.json", _greedy((False, 300), (False, 300)))
    proc = compare(a, b, b, a)
    assert proc.returncode == 2 and "pooled pairs need problems of their own" in proc.stderr and proc.stdout == ""
    proc = compare(a, b, a)
    assert proc.returncode == 2 and "give the runs in pairs (A B, or A B A2 B2 ...); got 3" in proc.stderr


def test_refuses_runs_on_different_problems(tmp_path, compare):
    three = _write_run(tmp_path / "a.json", _greedy(*[(True, 300)] * 3))
    proc = compare(three, _write_run(tmp_path / "b.json", _greedy(*[(True, 300)] * 4)))
    assert proc.returncode == 2 and "has 3 problems" in proc.stderr and "Traceback" not in proc.stderr
    proc = compare(three, _write_run(tmp_path / "c.json", _greedy(*[(True, 300)] * 3), first_target=11))
    assert proc.returncode == 2 and "problem 0 differs" in proc.stderr and proc.stdout == ""
    proc = compare(three, _write_run(tmp_path / "d.json", _greedy(*[(True, 300)] * 3), split="val"))
    assert proc.returncode == 2 and "a.json is on the 'test' split and" in proc.stderr and "d.json on 'val'" in proc.stderr


def test_refuses_trajectories_that_the_results_file_does_not_describe(tmp_path, compare):
    a = _write_run(tmp_path / "a.json", _greedy(*[(True, 300)] * 3))
    b = _write_run(tmp_path / "b.json", _greedy(*[(True, 300)] * 3))
    trajectories = tmp_path / "b.trajectories.jsonl"
    trajectories.write_text("".join(trajectories.read_text().splitlines(keepends=True)[:2]))  # an interrupted re-run
    proc = compare(a, b)
    assert proc.returncode == 2 and "reports 3 problems x 1 samples, but its trajectories file holds 2" in proc.stderr


def test_names_the_bad_file_and_line(tmp_path, compare):
    good = _write_run(tmp_path / "a.json", _greedy((True, 300), (True, 300)))
    bad = _write_run(tmp_path / "b.json", _greedy((True, 300), (True, 300)))
    lines = (tmp_path / "b.trajectories.jsonl").read_text().splitlines()
    (tmp_path / "b.trajectories.jsonl").write_text(lines[0] + "\n\n[1, 2]\n")
    proc = compare(good, bad)
    assert proc.returncode == 2 and "b.trajectories.jsonl:3: not an `apr-ds eval` trajectory" in proc.stderr
    (tmp_path / "b.trajectories.jsonl").write_bytes(b"\x1f\x8b\x08\x00 gzip bytes\xff\xfe\n")
    proc = compare(good, bad)
    assert proc.returncode == 2 and "not a text file of JSON lines" in proc.stderr and "Traceback" not in proc.stderr
    proc = compare(good, tmp_path / "missing.json")
    assert proc.returncode == 2 and "not a readable results file" in proc.stderr
    (tmp_path / "orphan.json").write_text((tmp_path / "a.json").read_text())
    proc = compare(good, tmp_path / "orphan.json")
    assert proc.returncode == 2 and "no trajectories at" in proc.stderr
    proc = compare(good, good, "--windows", 0)
    assert proc.returncode == 2 and "--windows must be positive" in proc.stderr
