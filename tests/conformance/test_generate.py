"""/generate as the rollout runtime calls it, on both servers: greedy tokens and behaviour log-probs against
transformers, the three ways a request finishes, the limits of the context, unknown fields, and the response
fields the client reads. Prompts are real Countdown prompts of the task, token ids with bos=1 first."""

import asyncio

import pytest
import torch

from apr_ds.lang import CALL_CLOSE, JOIN_OPEN
from apr_ds.tasks.countdown_trace import apr_prompt
from apr_ds.rollout.client import Generation, RolloutClient, ServerError
from servers import SHIPPED_APR

MAX_CONTEXT = 768  # conftest.MAX_CONTEXT: the thread length both servers are launched for
PROBLEMS = [(24, [3, 8, 2, 5]), (17, [11, 4, 9, 2]), (30, [5, 6, 1, 13])]
EOS = 2
# meta_info keys of SGLang 0.5.23's answer to a non-streamed request with return_logprob (tokenizer_manager.py)
META_KEYS = {"id", "finish_reason", "prompt_tokens", "weight_version", "num_retractions", "input_token_logprobs",
             "output_token_logprobs", "output_token_logprobs_length", "reasoning_tokens", "completion_tokens",
             "cached_tokens", "weight_versions", "cached_tokens_details", "dp_rank", "e2e_latency",
             "response_sent_to_client_ts"}


@pytest.fixture(scope="module")
def hf():
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    return AutoModelForCausalLM.from_pretrained(SHIPPED_APR).eval()


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(SHIPPED_APR)


@pytest.fixture(scope="module")
def prompts(tokenizer):
    return [[1] + tokenizer(apr_prompt(target, nums), add_special_tokens=False)["input_ids"]
            for target, nums in PROBLEMS]


def hf_greedy(hf, prompt, n):
    """transformers' greedy continuation: up to n tokens, ending with EOS if the model writes it."""
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=n, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def hf_logprobs(hf, prompt, output_ids):
    """log p(output_ids[i] | prompt + output_ids[:i]) from one forward pass."""
    with torch.no_grad():
        logits = hf(torch.tensor([prompt + output_ids])).logits[0, len(prompt) - 1:-1]
    return torch.log_softmax(logits.float(), -1).gather(1, torch.tensor(output_ids)[:, None]).squeeze(1)


def generate(server, payload):
    async def call():
        async with RolloutClient(server.url, max_retries=0) as client:
            return await client.generate(payload)
    return asyncio.run(call())


def refusal(server, payload) -> ServerError:
    with pytest.raises(ServerError) as refused:
        generate(server, payload)
    return refused.value


def greedy(max_new_tokens, **extra):
    return {"max_new_tokens": max_new_tokens, "temperature": 0, **extra}


def test_greedy_tokens_and_logprobs_are_those_of_transformers(server, hf, prompts):
    """Greedy output ids equal transformers' greedy ids, and return_logprob gives their log-probs (within 1e-4)."""
    for prompt in prompts:
        out = generate(server, {"input_ids": prompt, "sampling_params": greedy(48), "return_logprob": True})
        expected = hf_greedy(hf, prompt, 48)
        assert out["output_ids"] == expected
        logprobs = [entry[0] for entry in out["meta_info"]["output_token_logprobs"]]
        assert [entry[1] for entry in out["meta_info"]["output_token_logprobs"]] == expected
        assert torch.allclose(torch.tensor(logprobs), hf_logprobs(hf, prompt, expected), atol=1e-4, rtol=0)


def test_a_batch_answers_each_prompt_as_alone(server, hf, prompts):
    """input_ids as a list of lists: one answer per prompt, in order, each transformers' greedy continuation."""
    outs = generate(server, {"input_ids": prompts, "sampling_params": greedy(32), "return_logprob": True})
    assert isinstance(outs, list) and len(outs) == len(prompts)
    for prompt, out in zip(prompts, outs):
        expected = hf_greedy(hf, prompt, 32)
        assert out["output_ids"] == expected and out["meta_info"]["prompt_tokens"] == len(prompt)
        logprobs = torch.tensor([entry[0] for entry in out["meta_info"]["output_token_logprobs"]])
        assert torch.allclose(logprobs, hf_logprobs(hf, prompt, expected), atol=1e-4, rtol=0)


@pytest.mark.parametrize("stop", [CALL_CLOSE, "Resulting Num"], ids=["call-close", "inside-a-token"])
def test_a_stop_string_ends_the_output_with_it_when_no_stop_trim(server, hf, tokenizer, prompts, stop):
    """stop + no_stop_trim (the runtime's call): the output ids run up to the token completing the stop string,
    the text up to the string's end (also when that token goes on past it), finish_reason {type: stop, matched:
    <string>}; without no_stop_trim the same ids, and the text ends just before the string."""
    prompt = prompts[0]
    free = hf_greedy(hf, prompt, 300)
    cut = next(k for k in range(1, len(free) + 1) if stop in tokenizer.decode(free[:k]))  # the model writes it
    written = tokenizer.decode(free[:cut])
    sampling = greedy(300, stop=[stop, JOIN_OPEN], no_stop_trim=True)
    kept = generate(server, {"input_ids": prompt, "sampling_params": sampling})
    assert kept["output_ids"] == free[:cut]
    assert kept["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert kept["text"] == written[:written.index(stop) + len(stop)]
    trimmed = generate(server, {"input_ids": prompt, "sampling_params": {**sampling, "no_stop_trim": False}})
    assert trimmed["output_ids"] == free[:cut] and trimmed["meta_info"]["finish_reason"]["matched"] == stop
    assert trimmed["text"] == written[:written.index(stop)]


def test_eos_and_max_new_tokens_end_generation_as_sglang_reports_them(server, hf, prompts):
    """EOS: finish_reason {type: stop, matched: <EOS id>}, the EOS id last in output_ids; max_new_tokens reached:
    {type: length, length: max_new_tokens}."""
    prompt = prompts[0]
    free = hf_greedy(hf, prompt, 300)
    assert free[-1] == EOS  # the model ends this trace by itself
    ended = generate(server, {"input_ids": prompt, "sampling_params": greedy(300)})
    assert ended["output_ids"] == free and ended["meta_info"]["finish_reason"] == {"type": "stop", "matched": EOS}
    cut = generate(server, {"input_ids": prompt, "sampling_params": greedy(5)})
    assert cut["output_ids"] == free[:5] and cut["meta_info"]["finish_reason"] == {"type": "length", "length": 5}


def long_prompt(prompts, n):
    """n tokens of real trace text: bos, then the prompts' tokens over and over."""
    body = [t for prompt in prompts for t in prompt[1:]]
    return [1] + (body * (n // len(body) + 1))[:n - 1]


def test_a_thread_gets_exactly_the_tokens_that_fill_the_context(server, prompts):
    """prompt p + max_new_tokens 768 - p (the runtime's request) with ignore_eos: exactly 768 - p tokens."""
    prompt = prompts[1]
    want = MAX_CONTEXT - len(prompt)
    out = generate(server, {"input_ids": prompt, "sampling_params": greedy(want, ignore_eos=True)})
    assert len(out["output_ids"]) == want
    assert out["meta_info"]["finish_reason"] == {"type": "length", "length": want}


def test_prompts_at_the_input_limit_are_refused_as_too_long(server, prompts):
    """A prompt of C - 6 = 764 tokens is a 400 length refusal; one of 763 is served, clipped to 768 in all."""
    refused = refusal(server, {"input_ids": long_prompt(prompts, 764), "sampling_params": greedy(1)})
    assert refused.status == 400 and refused.is_length_refusal, refused
    served = generate(server, {"input_ids": long_prompt(prompts, 763), "sampling_params": greedy(7, ignore_eos=True)})
    assert len(served["output_ids"]) == MAX_CONTEXT - 763
    assert served["meta_info"]["finish_reason"] == {"type": "length", "length": MAX_CONTEXT - 763}


def test_prompt_plus_max_new_tokens_over_the_context_is_refused_and_at_it_clipped(server, prompts):
    """prompt + max_new_tokens = 771 (over C = 770): a 400 length refusal; = 770: served, clipped to 768 in all."""
    prompt = long_prompt(prompts, 700)
    refused = refusal(server, {"input_ids": prompt, "sampling_params": greedy(71, ignore_eos=True)})
    assert refused.status == 400 and refused.is_length_refusal, refused
    served = generate(server, {"input_ids": prompt, "sampling_params": greedy(70, ignore_eos=True)})
    assert len(prompt) + len(served["output_ids"]) == MAX_CONTEXT
    assert served["meta_info"]["finish_reason"] == {"type": "length", "length": MAX_CONTEXT - len(prompt)}


def test_unknown_fields_are_ignored_at_the_top_and_refused_in_sampling_params(server, prompts):
    """An unknown top-level field is ignored (200); an unknown sampling_params field is a 400 naming it."""
    ignored = generate(server, {"input_ids": prompts[0], "sampling_params": greedy(2), "no_such_field": 1})
    assert len(ignored["output_ids"]) == 2
    refused = refusal(server, {"input_ids": prompts[0], "sampling_params": {**greedy(2), "temprature": 0.5}})
    assert refused.status == 400 and refused.message.startswith("unknown field `temprature`, expected one of")
    assert not refused.is_length_refusal


def test_responses_carry_the_fields_the_client_reads(server, prompts):
    """output_ids, text and meta_info (finish_reason, prompt/completion/cached tokens, weight_version and the rest
    of SGLang's keys); a repeated prompt is served from the prefix cache; log-probs only when asked for."""
    prompt = prompts[2]
    generate(server, {"input_ids": prompt, "sampling_params": greedy(4)})
    out = generate(server, {"input_ids": prompt, "sampling_params": greedy(4), "return_logprob": True, "rid": "shape"})
    meta = out["meta_info"]
    assert set(meta) == META_KEYS
    assert meta["id"] == "shape" and meta["prompt_tokens"] == len(prompt) and meta["completion_tokens"] == 4
    assert meta["cached_tokens"] == len(prompt) - 1  # all but the last prompt token, whose logits are needed
    assert meta["cached_tokens_details"] == {"device": len(prompt) - 1, "host": 0}
    assert meta["weight_version"] == "default" and meta["weight_versions"] == [{"version": "default", "start": 0,
                                                                                 "end": 4}]
    assert meta["num_retractions"] == 0 and meta["input_token_logprobs"] == []
    assert meta["output_token_logprobs_length"] == 4
    assert all(isinstance(lp, float) and lp <= 0 and text is None for lp, _, text in meta["output_token_logprobs"])
    assert isinstance(out["text"], str) and len(out["output_ids"]) == 4
    plain = generate(server, {"input_ids": prompt, "sampling_params": greedy(4)})
    assert set(plain["meta_info"]) == META_KEYS - {"input_token_logprobs", "output_token_logprobs",
                                                   "output_token_logprobs_length"}
    gen = Generation.from_response(out)
    assert (gen.output_ids, gen.finish_reason, gen.weight_version) == (out["output_ids"], "length", "default")
    assert gen.logprobs == [entry[0] for entry in meta["output_token_logprobs"]] and gen.cached_tokens > 0


ACCEPTED = [{"temperature": 1.0, "top_p": 1.0, "top_k": -1},  # rollout.* defaults
            {"temperature": 0.7, "top_k": 1 << 30},  # SGLang's own top_k default: no cut
            {"temperature": 0, "top_k": 0}]  # greedy: top_k is not looked at
REFUSED = {"temperature": ({"temperature": -1}, "temperature must be a non-negative finite number, got -1."),
           "top_p": ({"top_p": 0}, "top_p must be in (0, 1], got 0."),
           "top_k": ({"temperature": 0.7, "top_k": 0}, "top_k must be -1 (disable) or at least 1, got 0."),
           "max_new_tokens": ({"max_new_tokens": -1}, "max_new_tokens must be at least 0, got -1.")}


def test_sampling_parameters_are_judged_as_sglang_judges_them(server, prompts):
    """What the runtime sends (and SGLang's defaults) is served; out-of-range values are 400s with SGLang's
    messages; an empty stop string matches at once."""
    for params in ACCEPTED:
        out = generate(server, {"input_ids": prompts[0], "sampling_params": {"max_new_tokens": 2, **params}})
        assert len(out["output_ids"]) == 2, params
    for name, (params, message) in REFUSED.items():
        refused = refusal(server, {"input_ids": prompts[0], "sampling_params": {"max_new_tokens": 2, **params}})
        assert (refused.status, refused.message) == (400, message), name
    empty = generate(server, {"input_ids": prompts[0], "sampling_params": greedy(5, stop="")})
    assert len(empty["output_ids"]) == 1 and empty["text"] == ""
    assert empty["meta_info"]["finish_reason"] == {"type": "stop", "matched": ""}
