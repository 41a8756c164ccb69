"""Model presets: shapes, parameter counts, and the Hugging Face directory round trip."""

import pytest
import torch

from apr_ds.errors import UserError
from apr_ds.model import PRESETS, build_model, count_parameters, config_for_preset, load_hf, save_hf

DOMAIN_VOCAB = 1117  # the domain tokenizer's size (apr_ds.data.tokenizer)


def allocated_parameters(config, non_embedding=True):
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # a tied matrix once
    if non_embedding:
        total -= sum(p.numel() for name, p in model.named_parameters() if name in ("model.embed_tokens.weight", "lm_head.weight"))
    return total


def test_paper_preset_has_228m_non_embedding_parameters():
    config = config_for_preset("paper", vocab_size=32_000)
    assert count_parameters(config) == allocated_parameters(config) == 227_709_952  # "228M non-embedding"
    assert allocated_parameters(config, non_embedding=False) == 227_709_952 + 2 * 32_000 * 1024  # untied: 293M
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads, config.intermediate_size) == (18, 1024, 16, 2752)
    assert config.max_position_embeddings == 4096 and config.rms_norm_eps == 1e-6
    assert config.rope_parameters["rope_theta"] == 10_000.0 and config.tie_word_embeddings is False


def test_cpu_presets_are_small():
    tiny = allocated_parameters(config_for_preset("tiny", DOMAIN_VOCAB), non_embedding=False)
    cpu = allocated_parameters(config_for_preset("cpu", DOMAIN_VOCAB), non_embedding=False)
    assert 0.7e6 < tiny < 1.5e6, tiny
    assert 1.5e6 < cpu < 5e6, cpu
    for name in PRESETS:
        assert count_parameters(config_for_preset(name, DOMAIN_VOCAB)) == allocated_parameters(config_for_preset(name, DOMAIN_VOCAB))


def test_context_override_and_unknown_preset():
    assert config_for_preset("tiny", 50, context=128).max_position_embeddings == 128
    with pytest.raises(UserError, match="unknown model preset 'huge'"):
        config_for_preset("huge", 50)


def test_build_is_a_function_of_the_seed():
    config = config_for_preset("tiny", 64, context=32)
    a, b, c = build_model(config, seed=1), build_model(config, seed=1), build_model(config, seed=2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.lm_head.weight, c.lm_head.weight)


def test_hf_directory_round_trip_gives_equal_logits(tmp_path):
    from apr_ds.data.tokenizer import save_tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    save_tokenizer(tmp_path / "tok")
    config = config_for_preset("tiny", DOMAIN_VOCAB, context=64)
    model = build_model(config, seed=0).eval()
    save_hf(model.state_dict(), config, tmp_path / "hf", tokenizer_dir=tmp_path / "tok")

    assert {"config.json", "model.safetensors", "tokenizer.json"} <= {p.name for p in (tmp_path / "hf").iterdir()}
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert type(loaded).__name__ == "LlamaForCausalLM"
    ids = torch.randint(3, DOMAIN_VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, load_hf(tmp_path / "hf")(ids).logits)
    assert AutoTokenizer.from_pretrained(tmp_path / "hf").pad_token_id == 0


@pytest.mark.parametrize("family, tied, hf_class", [("qwen2", False, "Qwen2ForCausalLM"), ("qwen3", True, "Qwen3ForCausalLM")])
def test_a_preset_in_another_family_counts_saves_and_loads(tmp_path, family, tied, hf_class):
    from transformers import AutoModelForCausalLM
    config = config_for_preset("tiny", DOMAIN_VOCAB, context=64, family=family, tie_embeddings=tied)
    assert count_parameters(config) == allocated_parameters(config)
    model = build_model(config, seed=0).eval()
    assert type(model).__name__ == hf_class and (model.lm_head.weight is model.model.embed_tokens.weight) == tied
    # the learner's gathered state dict names a tied matrix once (named_parameters), under the embedding's name
    save_hf(dict(model.named_parameters()), config, tmp_path / "hf")
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert (loaded.lm_head.weight is loaded.model.embed_tokens.weight) == tied
    ids = torch.randint(3, DOMAIN_VOCAB, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, loaded(ids).logits)


def test_unknown_family_is_named():
    with pytest.raises(UserError, match="unknown model family 'gpt2'"):
        config_for_preset("tiny", 50, family="gpt2")


def test_load_hf_on_a_non_model_directory(tmp_path):
    with pytest.raises(UserError, match="not a model directory"):
        load_hf(tmp_path)


@pytest.fixture
def truncated_model(tmp_path):
    """A copy of a real shipped model whose model.safetensors lost its second half (an interrupted copy)."""
    import shutil
    from pathlib import Path
    model = shutil.copytree(Path(__file__).resolve().parents[1] / "checkpoints" / "cpu" / "apr", tmp_path / "apr")
    weights = model / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return model


def test_a_truncated_weights_file_is_named_not_a_rust_traceback(truncated_model):
    weights = truncated_model / "model.safetensors"
    with pytest.raises(UserError, match=f"{weights} is truncated or corrupt"):
        load_hf(truncated_model)
    weights.write_bytes(b"\x00" * 4)  # not even a header
    with pytest.raises(UserError, match=f"{weights} is truncated or corrupt"):
        load_hf(truncated_model)
    weights.unlink()
    with pytest.raises(UserError, match="has no readable weights"):
        load_hf(truncated_model)


def test_rl_names_a_truncated_init_model_before_any_rank_starts(apr_ds_cli, truncated_model, tmp_path):
    import subprocess
    proc = subprocess.run(apr_ds_cli + ["rl", "--preset", "tiny", f"run_dir={tmp_path / 'run'}",
                                        f"rl.init_model={truncated_model}"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert f"apr-ds rl: error: {truncated_model / 'model.safetensors'} is truncated or corrupt" in proc.stderr
    assert "Traceback" not in proc.stderr and "starting" not in proc.stdout
