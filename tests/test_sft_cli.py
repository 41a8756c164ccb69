"""`apr-ds sft` / `apr-ds export` stop on bad input before training, with a message and no traceback."""

import pytest

from apr_ds.cli import main
from sft_fixtures import make_data_dir


def run_cli(capsys, *argv):
    code = main(list(argv))
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return code, err


@pytest.fixture
def run_dir(tmp_path):
    make_data_dir(tmp_path)
    return tmp_path


def test_missing_data(capsys, tmp_path):
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={tmp_path}")
    assert code == 2 and "no data at" in err and "run `apr-ds data`" in err


def test_corrupt_data(capsys, run_dir):
    (run_dir / "data" / "tokens" / "sosp" / "train.npz").write_bytes(b"\x00" * 100)
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}")
    assert code == 2 and "corrupt data file" in err


def test_tokenizer_mismatch(capsys, run_dir):
    tokenizer_json = run_dir / "data" / "tokenizer" / "tokenizer.json"
    tokenizer_json.write_text(tokenizer_json.read_text() + " ")
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}")
    assert code == 2 and "tokenizer mismatch" in err


def test_ds_config_contradicting_the_yaml(capsys, run_dir):
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}", "sft.deepspeed.config=zero3.json")
    assert code == 2 and "bf16.enabled=true but sft.deepspeed.precision=fp32" in err


def test_world_size_not_dividing_the_batch(capsys, run_dir, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "3")  # what torchrun / the deepspeed launcher would set
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}")
    assert code == 2 and "world size 3 does not divide the batch" in err


def test_resume_from_an_incomplete_checkpoint(capsys, run_dir):
    half = run_dir / "sft" / "sosp" / "checkpoints" / "step_00000010"
    half.mkdir(parents=True)
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}", "--resume", str(half))
    assert code == 2 and "incomplete" in err
    code, err = run_cli(capsys, "export", str(half), str(run_dir / "out"))
    assert code == 2 and "incomplete" in err


def test_init_model_that_does_not_fit(capsys, run_dir, tmp_path):
    from apr_ds.model import build_model, config_for_preset, save_hf

    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}", f"sft.init_model={tmp_path}/none/{{method}}")
    assert code == 2 and f"{tmp_path}/none/sosp is not a model directory" in err

    tokenizer_dir = run_dir / "data" / "tokenizer"
    config = config_for_preset("cpu", _vocab(run_dir))
    model = save_hf(build_model(config, seed=0).state_dict(), config, tmp_path / "cpu_shaped", tokenizer_dir)
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}", f"sft.init_model={model}")
    assert code == 2 and "does not have the model preset's shape: hidden_size 192 (preset 128)" in err

    config = config_for_preset("tiny", _vocab(run_dir))
    model = save_hf(build_model(config, seed=0).state_dict(), config, tmp_path / "other_tokenizer", tokenizer_dir)
    (model / "tokenizer.json").write_text((model / "tokenizer.json").read_text() + " ")
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}", f"sft.init_model={model}")
    assert code == 2 and "has a different tokenizer from the data's" in err


def _vocab(run_dir):
    import json
    return json.loads((run_dir / "data" / "manifest.json").read_text())["vocab_size"]


def test_init_model_with_truncated_weights(capsys, run_dir, tmp_path):
    """Named before any process group exists, not as safetensors' traceback from inside the engine build."""
    from apr_ds.model import build_model, config_for_preset, save_hf

    config = config_for_preset("tiny", _vocab(run_dir))
    model = save_hf(build_model(config, seed=0).state_dict(), config, tmp_path / "cut", run_dir / "data" / "tokenizer")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    code, err = run_cli(capsys, "sft", "--preset", "tiny", f"run_dir={run_dir}", f"sft.init_model={model}")
    assert code == 2 and f"{weights} is truncated or corrupt" in err
