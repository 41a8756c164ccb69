"""tools/heldout_problems.py: more held-out problems for `eval.problems_file`, and clear refusals."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import heldout_problems  # noqa: E402

from apr_ds.config import load_config
from apr_ds.tasks.countdown import Problem, make_splits


def test_writes_problems_no_split_holds(tmp_path):
    out = tmp_path / "heldout.jsonl"
    assert heldout_problems.main(["--preset", "tiny", "--count", "25", "--out", str(out), "task.num_train=300"]) == 0
    written = [Problem.from_json(json.loads(line)) for line in out.read_text().splitlines()]
    assert len(written) == 25
    splits = make_splits(load_config("tiny", ["task.num_train=300"]).task)
    assert not {p.key for ps in splits.values() for p in ps} & {p.key for p in written}


def test_refuses_to_overwrite_and_bad_counts(tmp_path, capsys):
    out = tmp_path / "heldout.jsonl"
    out.write_text("mine\n")
    assert heldout_problems.main(["--preset", "tiny", "--count", "5", "--out", str(out)]) == 2
    assert out.read_text() == "mine\n"
    assert "exists" in capsys.readouterr().err
    assert heldout_problems.main(["--preset", "tiny", "--count", "0", "--out", str(tmp_path / "new.jsonl")]) == 2
    assert "--count must be positive" in capsys.readouterr().err
    assert heldout_problems.main(["--preset", "tiny", "--count", "5", "--out", str(tmp_path / "new.jsonl"),
                                  "task.max_nmber=9"]) == 2
    assert "max_nmber" in capsys.readouterr().err
    assert not (tmp_path / "new.jsonl").exists()
