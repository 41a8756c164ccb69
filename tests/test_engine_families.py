"""The engine runs Qwen2 (q/k/v bias) and Qwen3 (per-head q/k RMSNorm, tied embeddings here) checkpoints beside
Llama: greedy output equals transformers `generate` for a concurrent batch, and log-probs equal what the RL learner
scores with a plain forward pass. Llama's own tests are test_engine_model.py."""

import pytest
import torch

from apr_ds.config import EngineConfig
from apr_ds.engine.engine import Engine
from apr_ds.engine.sequence import SamplingParams
from apr_ds.errors import UserError
from apr_ds.learner.loss import token_logprobs
from engine_fixtures import save_model

torch.set_num_threads(1)
PROMPTS = [[1, 5, 9, 33, 200], [1, 7], [1, 100, 101, 102, 103, 104, 105, 106, 107], [1, 42, 42, 42]]
FAMILIES = [("qwen2", False), ("qwen3", True)]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f for f, _ in FAMILIES])
def family_model(request, tmp_path_factory):
    family, tied = request.param
    directory = tmp_path_factory.mktemp(family)
    hf = save_model(directory, family=family, tie_word_embeddings=tied, max_position_embeddings=256, seed=5)
    engine = Engine(directory, EngineConfig(num_threads=1)).start()
    try:
        yield family, hf, engine
    finally:
        engine.shutdown()


def test_the_checkpoint_really_has_its_familys_parts(family_model):
    family, hf, _ = family_model
    names = dict(hf.named_parameters())
    if family == "qwen2":
        assert names["model.layers.0.self_attn.q_proj.bias"].abs().sum() > 0
    else:
        assert (names["model.layers.0.self_attn.q_norm.weight"] != 1).any()
        assert hf.lm_head.weight is hf.model.embed_tokens.weight


def test_greedy_matches_transformers_generate_for_a_concurrent_batch(family_model):
    _, hf, engine = family_model
    seqs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=20, temperature=0.0, ignore_eos=True))
    for prompt, seq in zip(PROMPTS, seqs):
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=20, min_new_tokens=20, do_sample=False, pad_token_id=0)
        assert seq.output_ids == out[0, len(prompt):].tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.7])
def test_logprobs_are_what_the_learner_scores_for_the_same_tokens(family_model, temperature):
    _, hf, engine = family_model
    seqs = engine.generate(PROMPTS[:3], SamplingParams(max_new_tokens=12, temperature=temperature, ignore_eos=True),
                           return_logprob=True)
    for prompt, seq in zip(PROMPTS, seqs):
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + seq.output_ids])).logits[:, len(prompt) - 1:-1]
        expected = token_logprobs(logits, torch.tensor([seq.output_ids]), temperature or 1.0)[0]
        assert torch.allclose(torch.tensor(seq.output_logprobs), expected, atol=1e-4)


def test_an_unsupported_architecture_is_refused_naming_the_supported_ones(tmp_path):
    from transformers import GPT2Config
    GPT2Config(n_layer=1, n_head=2, n_embd=16, vocab_size=32).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="'gpt2' model; apr-ds serve runs llama, qwen2, qwen3 models"):
        Engine(tmp_path, EngineConfig(num_threads=1))
