"""tools/operator_lines.py: arithmetic per operator, and the problems that need a division, from eval trajectories."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import operator_lines  # noqa: E402

DIVIDES = ("Current State: 3:[6, 2, 1], Operations: []\n"
           "Exploring Operation: 6/2=3, Resulting Numbers: [1, 3]\n"
           "Exploring Operation: 2-6=4, Resulting Numbers: [1, 4]\n")


def _row(nums, target, text, correct):
    return {"problem": {"nums": nums, "target": target}, "correct": correct,
            "threads": [{"thread_id": 0, "text": text}]}


def test_counts_operators_and_the_problems_only_a_division_solves(tmp_path, capsys):
    path = tmp_path / "apr_x.trajectories.jsonl"
    # 2 from [6, 3] needs 6/3; 3 from [6, 2, 1] does not (6-2-1); 9 from [6, 3] does not (6+3)
    rows = [_row([6, 3], 2, "", True), _row([6, 2, 1], 3, DIVIDES, False), _row([6, 3], 9, "", True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ops.json"
    assert operator_lines.main([str(path), "--out", str(out)]) == 0
    [summary] = json.loads(out.read_text())
    assert (summary["problems"], summary["solved"]) == (3, 2)
    assert (summary["need_division"], summary["solved_needing_division"]) == (1, 1)
    assert summary["operators"]["/"] == {"lines": 1, "right": 1, "no_right_result": 0}
    assert summary["operators"]["-"] == {"lines": 1, "right": 0, "no_right_result": 1}
    assert summary["malformed"] == {"state": 0, "operation": 0, "node": 0}
    assert "apr_x.trajectories.jsonl" in capsys.readouterr().out


def test_counts_lines_that_do_not_parse_by_kind_and_per_thousand_problems(tmp_path, capsys):
    path = tmp_path / "apr_y.trajectories.jsonl"
    broken = ("Current State: 3:[6, 2, 1], Operations: []\n"
              "Exploring Operation: 6/2=]\n"                      # does not parse
              "Exploring Operation: 6-2=4, Resulting Numbers: [1, 4]\n"
              "Current State: 3:[6, 2\n"                          # does not parse
              "Exploring Operation: 6+1=")                         # cut by the window: not complete, not judged
    rows = [_row([6, 2, 1], 3, broken, False), _row([6, 3], 9, "", True)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "ops.json"
    assert operator_lines.main([str(path), "--out", str(out)]) == 0
    [summary] = json.loads(out.read_text())
    assert summary["malformed"] == {"state": 1, "operation": 1, "node": 0}
    assert summary["operators"]["-"]["lines"] == 1
    assert capsys.readouterr().out.splitlines()[1].endswith("500 / 500 / 0")


def test_a_file_that_is_not_trajectories_is_named(tmp_path, capsys):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(_row([6, 3], 9, "", True)) + "\n{\"problem\": 1}\n")
    assert operator_lines.main([str(path)]) == 2
    assert f"{path}:2: not an eval trajectory" in capsys.readouterr().err
    assert operator_lines.main([str(tmp_path / "missing.jsonl")]) == 2
