"""`apr-ds data` end to end, as a real subprocess: files, manifest, determinism across worker counts."""

import hashlib
import json
import subprocess

import numpy as np
import pytest

SMALL = ["task.num_train=150", "task.num_val=20", "task.num_test=20", "task.num_test_unseen_targets=20"]


def _build(cli, run_dir, *extra):
    proc = subprocess.run(cli + ["data", "--preset", "tiny", f"run_dir={run_dir}", *SMALL, *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc


def _digest(directory):
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(directory.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    import sys
    cli = [sys.executable, "-m", "apr_ds.cli"]
    one, two = tmp_path_factory.mktemp("w1"), tmp_path_factory.mktemp("w2")
    proc = _build(cli, one, "data.workers=1")
    _build(cli, two, "data.workers=2")
    return one / "data", two / "data", proc


def test_outputs_are_byte_identical_across_worker_counts(built):
    one, two, _ = built
    d1, d2 = _digest(one), _digest(two)
    d1.pop("config.yaml"), d2.pop("config.yaml")  # records the worker count itself
    d1.pop("manifest.json"), d2.pop("manifest.json")
    assert d1 == d2 and len(d1) > 15


def test_layout_manifest_and_summary(built):
    data, _, proc = built
    manifest = json.loads((data / "manifest.json").read_text())
    assert manifest["problems"] == {"train": 150, "val": 20, "test": 20, "test_unseen_targets": 20}
    assert manifest["config"]["task"]["num_train"] == 150
    assert (data / "config.yaml").is_file() and (data / "tokenizer" / "tokenizer.json").is_file()
    for method in ("sosp", "apr"):
        stats = manifest["methods"][method]["train"]
        assert 0 < stats["solver_success"] <= 1 and stats["sequences"] > 0
        assert stats["tokens_per_sequence"]["max"] <= 512
    assert manifest["methods"]["apr"]["train"]["children_per_spawn"] >= 2
    assert manifest["methods"]["sosp"]["train"]["spawns_per_problem"] == 0
    assert "sosp" in proc.stdout and "apr" in proc.stdout and "tok/seq" in proc.stdout


def test_token_files_decode_to_the_sequences(built):
    from apr_ds.data.tokenizer import decode, load_tokenizer
    data, _, _ = built
    tok = load_tokenizer(data / "tokenizer")
    for method in ("sosp", "apr"):
        arrays = np.load(data / "tokens" / method / "train.npz")
        ids, offsets = arrays["ids"], arrays["offsets"]
        rows = [json.loads(line) for line in (data / "sequences" / method / "train.jsonl").read_text().splitlines()]
        assert len(offsets) == len(rows) + 1 and offsets[-1] == len(ids)
        for i in (0, len(rows) // 2, len(rows) - 1):
            seq = ids[offsets[i]:offsets[i + 1]].tolist()
            assert seq[0] == tok.bos_token_id and seq[-1] == tok.eos_token_id
            assert decode(tok, seq[1:-1]) == rows[i]["text"]
    apr_rows = [json.loads(line) for line in (data / "sequences" / "apr" / "train.jsonl").read_text().splitlines()]
    assert {r["role"] for r in apr_rows} == {"main", "child"}


def test_conditioning_prefixes(tmp_path):
    import sys
    cli = [sys.executable, "-m", "apr_ds.cli"]
    _build(cli, tmp_path / "apr", "data.apr_sub_call_budget=true", "data.workers=1")
    rows = [json.loads(line) for line in (tmp_path / "apr" / "data" / "sequences" / "apr" / "train.jsonl").read_text().splitlines()]
    mains = [r for r in rows if r["role"] == "main"]
    assert all(r["text"].startswith("Sub Call Budget: ") for r in mains)
    assert not any(r["text"].startswith("Sub Call Budget") for r in rows if r["role"] == "child")
    traces = [json.loads(line) for line in (tmp_path / "apr" / "data" / "traces" / "apr" / "train.jsonl").read_text().splitlines()]
    checked = 0
    for index, trace in enumerate(traces):
        children = sum(len(spawn) for spawn in trace["sub_calls"])
        assert trace["main_calls"][0].startswith("Moving to Node #0\n")
        texts = [r["text"] for r in mains if r["problem"] == index]  # empty when dropped as over-length
        assert all(t == f"Sub Call Budget: {children} " + call for t, call in zip(texts, trace["main_calls"]))
        checked += bool(texts)
    assert checked > 100
    # token budgets are multiples of the bin and cover the sequence
    _build(cli, tmp_path / "sosp", "data.sosp_token_budget=true", "data.workers=1")
    rows = [json.loads(line) for line in (tmp_path / "sosp" / "data" / "sequences" / "sosp" / "train.jsonl").read_text().splitlines()]
    budgets = {int(r["text"].split(" ", 3)[2]) for r in rows}
    assert budgets <= {512} and all(r["text"].startswith("Token Budget: 512 Current State: ") for r in rows)


def test_filtering_options(tmp_path):
    import sys
    cli = [sys.executable, "-m", "apr_ds.cli"]
    _build(cli, tmp_path, "data.keep_failed=false", "data.max_seq_len=200", "data.workers=1")
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    stats = manifest["methods"]["sosp"]["train"]
    assert stats["dropped_failed"] > 0 and stats["dropped_over_length"] > 0
    assert stats["tokens_per_sequence"]["max"] <= 200


def test_a_fixed_beam_spawns_that_many_children(tmp_path):
    import sys
    cli = [sys.executable, "-m", "apr_ds.cli"]
    _build(cli, tmp_path / "mixed", "solver.apr_max_beam=3", "solver.apr_max_child_beam=3", "data.workers=1")
    _build(cli, tmp_path / "fixed", "solver.apr_min_beam=3", "solver.apr_max_beam=3", "solver.apr_max_child_beam=3",
           "data.workers=1")
    children = {run: json.loads((tmp_path / run / "data" / "manifest.json").read_text())["methods"]["apr"]["train"]
                ["children_per_spawn"] for run in ("mixed", "fixed")}
    assert children["fixed"] == 3.0 and 2.0 <= children["mixed"] < 3.0  # beam 2 spawns two; beam 1 never spawns


def test_bad_option_is_a_clear_error(tmp_path):
    import sys
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "data", f"run_dir={tmp_path}", "data.over_length=truncate"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "data.over_length must be drop or keep" in proc.stderr and "Traceback" not in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "apr_ds.cli", "data", f"run_dir={tmp_path}", "solver.sosp_min_beam=4",
                           "solver.sosp_max_beam=3"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "solver.sosp_min_beam must be between 1 and solver.sosp_max_beam, got 4..3" in proc.stderr
