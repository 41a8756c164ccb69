"""`apr-ds compare`: two eval runs paired problem by problem, from trajectories files in eval's own format."""

import json
import subprocess
import sys

import pytest

from apr_ds.eval.compare import sign_test_p
from apr_ds.rollout.trajectory import Segment, Thread, Trajectory


def _trajectory(problem, correct, context_len):
    segment = Segment(prompt_ids=[1] * 10, output_ids=[2] * (context_len - 10), logprobs=[0.0] * (context_len - 10),
                      finish_reason="stop", weight_version="0", cached_tokens=0, start=0.0, end=1.0)
    thread = Thread(thread_id=0, parent_id=None, depth=0, prompt="p", segments=[segment], status="done")
    return Trajectory(problem=problem, method="apr", threads=[thread], correct=correct)


def _write_run(path, outcomes, temperature=0.0, samples=1):
    """outcomes: one (correct, longest thread) per problem; eval writes a problem's samples one after another."""
    with open(path.with_name(path.stem + ".trajectories.jsonl"), "w") as f:
        for index, (correct, length) in enumerate(outcomes):
            for sample in range(samples):
                record = _trajectory({"nums": [index, 2, 3, 4], "target": 10}, correct and sample == 0, length).to_json()
                f.write(json.dumps({**record, "temperature": temperature, "budget": None}) + "\n")
    path.write_text("{}")
    return path


def _compare(*args):
    return subprocess.run([sys.executable, "-m", "apr_ds.cli", "compare", *map(str, args)],
                          capture_output=True, text=True, timeout=120)


def test_sign_test_matches_the_binomial_tail():
    assert sign_test_p(0, 0) == 1.0
    assert sign_test_p(5, 0) == pytest.approx(2 / 32)
    assert sign_test_p(3, 3) == 1.0
    assert sign_test_p(40, 24) == sign_test_p(24, 40) == pytest.approx(0.0602, abs=5e-4)


def test_counts_problems_per_window(tmp_path):
    # problem:        0          1          2           3           4          5
    a = [(True, 400), (True, 700), (True, 700), (False, 300), (True, 300), (False, 300)]
    b = [(True, 400), (False, 300), (True, 400), (True, 700), (False, 300), (False, 300)]
    proc = _compare(_write_run(tmp_path / "a.json", a), _write_run(tmp_path / "b.json", b), "--windows", 512, 768)
    assert proc.returncode == 0, proc.stderr
    rows = [line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["0.0"]]
    # at 512: A solves 0 and 4, B solves 0 and 2; at 768 everything solved counts
    assert rows[0][2:] == ["512", "6", "33.3%", "33.3%", "1", "1", "1", "1.000"]
    assert rows[1][2:] == ["768", "6", "66.7%", "50.0%", "2", "2", "1", "1.000"]


def test_best_of_n_compares_the_first_sample(tmp_path):
    a = _write_run(tmp_path / "a.json", [(True, 300)] * 4, samples=4)
    b = _write_run(tmp_path / "b.json", [(False, 300)] * 4)
    proc = _compare(a, b)
    assert proc.returncode == 0, proc.stderr
    row = next(line.split() for line in proc.stdout.splitlines() if line.split()[:1] == ["0.0"])
    assert row[2:] == ["-", "4", "100.0%", "0.0%", "0", "4", "0", "0.125"]


def test_refuses_runs_on_different_problems(tmp_path):
    a = _write_run(tmp_path / "a.json", [(True, 300)] * 3)
    b = _write_run(tmp_path / "b.json", [(True, 300)] * 4)
    proc = _compare(a, b)
    assert proc.returncode == 2 and "has 3 problems" in proc.stderr and "Traceback" not in proc.stderr
    c = _write_run(tmp_path / "c.json", [(True, 300)] * 3, temperature=0.7)
    proc = _compare(a, c)
    assert proc.returncode == 2 and "share no sampling setting" in proc.stderr


def test_names_the_bad_file_and_line(tmp_path):
    good = _write_run(tmp_path / "a.json", [(True, 300)] * 2)
    bad = tmp_path / "b.trajectories.jsonl"
    bad.write_text(good.with_name("a.trajectories.jsonl").read_text().splitlines()[0] + "\n{not json\n")
    proc = _compare(good, bad)
    assert proc.returncode == 2 and f"{bad}:2: not an `apr-ds eval` trajectory" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = _compare(good, tmp_path / "missing.json")
    assert proc.returncode == 2 and "no trajectories at" in proc.stderr
