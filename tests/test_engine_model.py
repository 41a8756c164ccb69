"""The engine in-process: greedy equals transformers `generate`, log-probs equal the RL learner's score of a
plain forward pass, the prefix cache changes nothing but the work done, stops and limits, batching and memory
pressure."""

import threading

import pytest
import torch

from apr_ds.config import EngineConfig
from apr_ds.engine.engine import Engine
from apr_ds.engine.sequence import SamplingParams
from apr_ds.learner.loss import token_logprobs
from engine_fixtures import save_model

torch.set_num_threads(1)
GREEDY = dict(temperature=0.0, ignore_eos=True)
PROMPTS = [[1, 5, 9, 33, 200], [1, 7], [1, 100, 101, 102, 103, 104, 105, 106, 107], [1, 42, 42, 42], [1, 900, 3]]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny-llama")
    return directory, save_model(directory, max_position_embeddings=256)


@pytest.fixture(scope="module")
def engine(model_dir):
    engine = Engine(model_dir[0], EngineConfig(num_threads=1)).start()
    try:
        yield engine
    finally:
        engine.shutdown()


def make_engine(model_dir, **config):
    return Engine(model_dir, EngineConfig(num_threads=1, **config)).start()


def hf_greedy(hf, prompt, n, ignore_eos=True):
    extra = dict(min_new_tokens=n) if ignore_eos else {}
    out = hf.generate(torch.tensor([prompt]), max_new_tokens=n, do_sample=False, pad_token_id=0, **extra)
    return out[0, len(prompt):].tolist()


def check_invariants(engine):
    engine.call(engine.scheduler.check_invariants).result()


def test_greedy_matches_transformers_generate_for_a_concurrent_batch(model_dir, engine):
    _, hf = model_dir
    seqs = engine.generate(PROMPTS, SamplingParams(max_new_tokens=24, **GREEDY))
    for prompt, seq in zip(PROMPTS, seqs):
        assert seq.output_ids == hf_greedy(hf, prompt, 24)
        assert seq.finish_reason() == {"type": "length", "length": 24}
    check_invariants(engine)


def test_greedy_with_tied_embeddings_and_eos_stopping_matches_transformers(tmp_path):
    hf = save_model(tmp_path, tie_word_embeddings=True, seed=3)
    engine = make_engine(tmp_path)
    try:
        prompts = [[1, 11, 12], [1, 500]]
        seqs = engine.generate(prompts, SamplingParams(max_new_tokens=40, temperature=0.0))
        for prompt, seq in zip(prompts, seqs):
            reference = hf_greedy(hf, prompt, 40, ignore_eos=False)
            assert seq.output_ids == reference
            if reference[-1] == 2:
                assert seq.finish_reason() == {"type": "stop", "matched": 2}
    finally:
        engine.shutdown()


@pytest.mark.parametrize("temperature", [0.0, 1.0, 0.5])
def test_logprobs_are_what_the_learner_scores_for_the_same_tokens(model_dir, engine, temperature):
    """The RL learner's importance weight compares these log-probs with its own (learner/loss.py token_logprobs) at
    the rollout temperature: both must be the log-softmax of logits / T (of plain logits when greedy)."""
    _, hf = model_dir
    seqs = engine.generate(PROMPTS[:3], SamplingParams(max_new_tokens=16, temperature=temperature, ignore_eos=True),
                           return_logprob=True)
    for prompt, seq in zip(PROMPTS, seqs):
        with torch.no_grad():
            logits = hf(torch.tensor([prompt + seq.output_ids])).logits[:, len(prompt) - 1:-1]
        expected = token_logprobs(logits, torch.tensor([seq.output_ids]), temperature or 1.0)[0]
        assert torch.allclose(torch.tensor(seq.output_logprobs), expected, atol=1e-4)


def test_prefix_cache_on_and_off_give_identical_outputs_and_hits_are_reported(model_dir):
    shared = [1, 60, 61, 62, 63, 64, 65, 66, 67, 68]
    first_wave = [shared, shared + [70], shared[:6] + [80, 81]]
    second_wave = [shared + [70, 71], shared, shared[:8] + [90], [1, 2, 3]]
    results = {}
    for cache in (True, False):
        engine = make_engine(model_dir[0], prefix_cache=cache)
        try:
            first = engine.generate(first_wave, SamplingParams(max_new_tokens=12, **GREEDY))
            second = engine.generate(second_wave, SamplingParams(max_new_tokens=12, **GREEDY))
            check_invariants(engine)
        finally:
            engine.shutdown()
        results[cache] = ([s.output_ids for s in first + second], [s.cached_tokens for s in second])
    assert results[True][0] == results[False][0]
    assert results[False][1] == [0, 0, 0, 0]
    hits = results[True][1]
    # shared + [70] was cached; shared is cached whole (one token is recomputed for its logits); only BOS of [1, 2, 3]
    assert hits == [len(shared) + 1, len(shared) - 1, 8, 1]


def test_a_parent_resuming_after_a_join_hits_the_cache_for_its_whole_context(engine):
    prompt = [1] + list(range(300, 340))
    [parent] = engine.generate([prompt], SamplingParams(max_new_tokens=20, **GREEDY))
    join_block = [4, 5, 6, 7]
    resumed_prompt = prompt + parent.output_ids + join_block
    [resumed] = engine.generate([resumed_prompt], SamplingParams(max_new_tokens=4, **GREEDY))
    assert resumed.cached_tokens == len(prompt) + len(parent.output_ids)


def test_stop_string_spanning_two_tokens_stops_there_and_is_trimmed(model_dir, engine):
    tokenizer = engine.tokenizer
    prompt = [1, 200, 201]
    [free] = engine.generate([prompt], SamplingParams(max_new_tokens=30, **GREEDY))
    ref = free.output_ids
    stop = tokenizer.decode(ref[6:8])
    # the generation must end at the first token that completes the stop string
    end = next(k for k in range(1, len(ref) + 1) if stop in tokenizer.decode(ref[:k]))
    assert stop not in tokenizer.decode(ref[end - 1:end])  # it really spans tokens
    [stopped] = engine.generate([prompt], SamplingParams(max_new_tokens=30, stop=["never", stop], **GREEDY))
    assert stopped.output_ids == ref[:end]
    assert stopped.finish_reason() == {"type": "stop", "matched": stop}
    text = engine.detokenizer.output_text(stopped)
    assert text == tokenizer.decode(ref[:end])[:tokenizer.decode(ref[:end]).find(stop)]
    stopped.params.no_stop_trim = True
    assert engine.detokenizer.output_text(stopped).endswith(stop)


def test_stop_token_ids_stop_generation_on_that_id(engine):
    [free] = engine.generate([[1, 77]], SamplingParams(max_new_tokens=30, **GREEDY))
    stop_id = free.output_ids[5]
    [stopped] = engine.generate([[1, 77]], SamplingParams(max_new_tokens=30, stop_token_ids=[stop_id], **GREEDY))
    assert stopped.output_ids == free.output_ids[:free.output_ids.index(stop_id) + 1]
    assert stopped.finish_reason() == {"type": "stop", "matched": stop_id}


def test_context_limit_clamps_generation_and_reports_length(engine):
    prompt = [1] + [300] * 249  # 250 of the model's 256 positions
    [seq] = engine.generate([prompt], SamplingParams(max_new_tokens=100, **GREEDY))
    assert len(seq.output_ids) == 6 and len(prompt) + len(seq.output_ids) == 256
    assert seq.finish_reason() == {"type": "length", "length": 6}


def test_max_new_tokens_zero_only_prefills_and_caches_the_prompt(engine):
    prompt = [1, 31, 32, 33, 34, 35]
    [warm] = engine.generate([prompt], SamplingParams(max_new_tokens=0, **GREEDY))
    assert warm.output_ids == [] and warm.finish_reason()["type"] == "length"
    [hit] = engine.generate([prompt + [36]], SamplingParams(max_new_tokens=1, **GREEDY))
    assert hit.cached_tokens == len(prompt)


def test_top_k_1_and_a_tiny_top_p_sample_the_greedy_token(engine):
    prompt = [[1, 8, 9]]
    [greedy] = engine.generate(prompt, SamplingParams(max_new_tokens=10, **GREEDY))
    [top_k] = engine.generate(prompt, SamplingParams(max_new_tokens=10, temperature=1.3, top_k=1, ignore_eos=True))
    [top_p] = engine.generate(prompt, SamplingParams(max_new_tokens=10, temperature=1.3, top_p=1e-6, ignore_eos=True))
    assert greedy.output_ids == top_k.output_ids == top_p.output_ids


def test_requests_share_forward_passes_and_join_and_leave_at_every_step(model_dir, engine):
    steps, original_run = [], engine.runner.run

    def recording_run(seqs, num_new, sample):
        steps.append({s.rid for s, n in zip(seqs, num_new)})
        return original_run(seqs, num_new, sample)

    joined = threading.Event()
    late = engine.new_sequence([1, 3, 4], SamplingParams(max_new_tokens=5, **GREEDY), rid="late",
                               on_finish=lambda s: joined.set())
    long = engine.new_sequence([1, 9, 9], SamplingParams(max_new_tokens=60, **GREEDY), rid="long")
    short = engine.new_sequence([1, 8, 8], SamplingParams(max_new_tokens=5, **GREEDY), rid="short",
                                on_finish=lambda s: engine.submit(late))  # joins while "long" runs
    engine.runner.run = recording_run
    try:
        others = engine.generate([[1, 10 + i] for i in range(14)], SamplingParams(max_new_tokens=40, **GREEDY))
        for seq in (long, short):
            engine.submit(seq)
        assert joined.wait(60)
        engine.generate([[1, 2]], SamplingParams(max_new_tokens=60, **GREEDY))  # "long" is done by now too
    finally:
        engine.runner.run = original_run
    assert len(others) == 14 and max(len(s) for s in steps) >= 14  # many requests in one forward pass
    assert any({"long", "late"} <= s for s in steps)  # "late" joined a running batch
    assert any("long" in s and "short" not in s and "late" not in s for s in steps[-30:])  # both left before "long"
    assert long.finish_reason()["type"] == "length" and len(long.output_ids) == 60
    _, hf = model_dir  # rows joined, left and were compacted in the decode slab: outputs must not notice
    for seq in (long, short, late, others[0], others[-1]):
        assert seq.output_ids == hf_greedy(hf, seq.prompt_ids, seq.max_new_tokens)


def test_memory_pressure_retracts_requests_and_outputs_are_unchanged(model_dir, engine):
    prompts = [[1, 50 + i, 51 + i, 52 + i] for i in range(6)]
    params = SamplingParams(max_new_tokens=40, **GREEDY)
    roomy = engine.generate(prompts, params)
    tight = make_engine(model_dir[0], max_model_len=64, kv_cache_tokens=80)  # 6 x 44 tokens do not fit in 80
    try:
        retractions, original = [0], tight.scheduler.retract

        def counting_retract(seq):
            retractions[0] += 1
            original(seq)
        tight.scheduler.retract = counting_retract
        squeezed = tight.generate(prompts, params, timeout=120)
        check_invariants(tight)
    finally:
        tight.shutdown()
    assert retractions[0] > 0
    assert [s.output_ids for s in squeezed] == [s.output_ids for s in roomy]


def test_engine_settings_that_cannot_work_are_user_errors(model_dir):
    from apr_ds.errors import UserError
    with pytest.raises(UserError, match="kv_cache_tokens"):
        Engine(model_dir[0], EngineConfig(kv_cache_tokens=100))  # less than one 256-token context
    with pytest.raises(UserError, match="max_position_embeddings"):
        Engine(model_dir[0], EngineConfig(max_model_len=10_000))


def test_serve_cli_reports_bad_arguments_without_a_traceback(apr_ds_cli, tmp_path):
    import subprocess

    from engine_fixtures import ENV
    for args, message in ((["--model", str(tmp_path)], "no config.json"),
                          (["--model", str(tmp_path), "task.seed=3"], "engine.* overrides only"),
                          (["--model", str(tmp_path), "engine.kv_cache_token=5"], "did you mean")):
        result = subprocess.run(apr_ds_cli + ["serve", *args], env=ENV, capture_output=True, text=True, timeout=120)
        assert result.returncode == 2 and message in result.stderr and "Traceback" not in result.stderr
