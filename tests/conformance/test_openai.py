"""The OpenAI-compatible surface and streaming, on both servers: /v1/models, /v1/completions (answered and
streamed, n > 1) and streamed /generate. Greedy token ids are those of transformers on both, whichever way they are
asked for, so both servers give the same ones. Prompts are token ids of real Countdown prompts (bos=1 first)."""

import json

import aiohttp
import pytest
import torch

from apr_ds.tasks.countdown_trace import apr_prompt
from engine_fixtures import run
from servers import SHIPPED_APR

PROBLEM = (24, [3, 8, 2, 5])
EOS = 2
NEW_TOKENS = 24


@pytest.fixture(scope="module")
def prompt():
    from transformers import AutoTokenizer
    tokenizer = AutoTokenizer.from_pretrained(SHIPPED_APR)
    return [1] + tokenizer(apr_prompt(*PROBLEM), add_special_tokens=False)["input_ids"]


@pytest.fixture(scope="module")
def expected(prompt):
    """transformers' greedy continuation (tests/conformance/test_generate.py `hf_greedy`)."""
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    hf = AutoModelForCausalLM.from_pretrained(SHIPPED_APR).eval()
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                          max_new_tokens=NEW_TOKENS, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    return out[0, len(prompt):].tolist()


async def post(url, body):
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as r:
            return r.status, await r.json(content_type=None)


async def post_stream(url, body) -> list:
    """The `data:` payloads of an SSE answer, parsed; the last one must be [DONE]."""
    events = []
    async with aiohttp.ClientSession() as session:
        async with session.post(url, json=body) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/event-stream")
            async for line in r.content:
                line = line.strip()
                if line:
                    assert line.startswith(b"data: ")
                    events.append(line[len(b"data: "):].decode())
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


def completion(prompt, **extra):
    return {"prompt": prompt, "max_tokens": NEW_TOKENS, "temperature": 0, "return_token_ids": True, **extra}


def test_v1_models_names_the_served_model(server):
    async def main():
        async with aiohttp.ClientSession() as session:
            async with session.get(server.url + "/v1/models") as r:
                return r.status, await r.json()
    status, models = run(main())
    assert status == 200 and models["object"] == "list"
    [card] = models["data"]
    assert card["object"] == "model" and card["owned_by"] == "sglang" and card["id"] == card["root"]
    assert isinstance(card["max_model_len"], int)


def test_v1_completions_greedy_ids_answered_and_streamed(server, prompt, expected):
    status, answer = run(post(server.url + "/v1/completions", completion(prompt)))
    assert status == 200 and answer["object"] == "text_completion"
    [choice] = answer["choices"]
    assert choice["token_ids"] == expected
    assert choice["finish_reason"] in ("stop", "length") and choice["index"] == 0
    assert answer["usage"]["prompt_tokens"] == len(prompt)
    assert answer["usage"]["completion_tokens"] == len(expected)
    assert answer["usage"]["total_tokens"] == len(prompt) + len(expected)

    chunks = run(post_stream(server.url + "/v1/completions", completion(prompt, stream=True)))
    assert all(c["object"] == "text_completion" and len(c["choices"]) == 1 for c in chunks)
    assert sum((c["choices"][0]["token_ids"] for c in chunks), []) == expected
    assert "".join(c["choices"][0]["text"] for c in chunks) == choice["text"]
    assert chunks[-1]["choices"][0]["finish_reason"] == choice["finish_reason"]
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-1])


def test_v1_completions_n_samples(server, prompt, expected):
    status, answer = run(post(server.url + "/v1/completions", completion(prompt, n=3)))
    assert status == 200
    assert [c["index"] for c in answer["choices"]] == [0, 1, 2]
    assert all(c["token_ids"] == expected for c in answer["choices"])  # greedy: every sample is the same
    assert answer["usage"]["prompt_tokens"] == len(prompt)  # a prompt counts once for its samples
    assert answer["usage"]["completion_tokens"] == 3 * len(expected)

    chunks = run(post_stream(server.url + "/v1/completions", completion(prompt, n=2, stream=True,
                                                                       stream_options={"include_usage": True})))
    for index in (0, 1):
        mine = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == index]
        assert sum((c["token_ids"] for c in mine), []) == expected
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 2 * len(expected)


def test_generate_streamed_greedy_ids(server, prompt, expected):
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0},
            "stream": True}
    chunks = run(post_stream(server.url + "/generate", body))
    assert chunks[-1]["output_ids"] == expected  # cumulative, as SGLang sends them
    assert all(chunks[i]["output_ids"] == expected[:len(chunks[i]["output_ids"])] for i in range(len(chunks)))
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    assert chunks[-1]["meta_info"]["finish_reason"]["type"] in ("stop", "length")
    assert chunks[-1]["meta_info"]["completion_tokens"] == len(expected)
    assert all(chunks[-1]["text"].startswith(c["text"]) for c in chunks)

    # n > 1: a list of samples, and in a stream every chunk says which sample it belongs to
    n_body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": NEW_TOKENS, "temperature": 0, "n": 4}}
    status, samples = run(post(server.url + "/generate", n_body))
    assert status == 200 and [s["output_ids"] for s in samples] == [expected] * 4
    chunks = run(post_stream(server.url + "/generate", {**n_body, "stream": True}))
    last = {c["index"]: c for c in chunks}
    assert sorted(last) == [0, 1, 2, 3] and all(c["output_ids"] == expected for c in last.values())


ERROR_KEYS = {"object", "message", "type", "param", "code"}


def test_v1_answer_shapes_and_refusals(server, prompt):
    """The fields SGLang answers with (serving_completions.py, protocol.py), and its ErrorResponse for requests it
    refuses: wrong types, a non-positive max_tokens, an empty prompt, a prompt over the context, bad sampling."""
    status, answer = run(post(server.url + "/v1/completions", {"prompt": prompt, "max_tokens": 3, "logprobs": 0,
                                                               "bogus_field": 1}))  # extra fields: ignored
    assert status == 200
    assert set(answer) == {"id", "object", "created", "model", "choices", "usage", "metadata"}
    [choice] = answer["choices"]
    assert set(choice) == {"index", "text", "logprobs", "finish_reason", "matched_stop"}
    assert set(choice["logprobs"]) == {"text_offset", "token_logprobs", "tokens", "top_logprobs"}
    assert len(choice["logprobs"]["token_logprobs"]) == 3 and "".join(choice["logprobs"]["tokens"]) == choice["text"]
    chunks = run(post_stream(server.url + "/generate", {"input_ids": prompt, "stream": True,
                                                        "sampling_params": {"max_new_tokens": 3, "temperature": 0}}))
    assert "e2e_latency" in chunks[-1]["meta_info"] and "response_sent_to_client_ts" not in chunks[-1]["meta_info"]
    assert all("e2e_latency" not in c["meta_info"] for c in chunks[:-1])

    refused = {
        "wrong prompt type": {"prompt": 5},
        "negative max_tokens": {"prompt": prompt, "max_tokens": -1},
        "max_tokens not a number": {"prompt": prompt, "max_tokens": "many"},
        "empty prompt": {"prompt": ""},
        "prompt over the context": {"prompt": [1] * 900, "max_tokens": 3},
        "top_p zero": {"prompt": prompt, "top_p": 0},
    }
    for name, body in refused.items():
        status, error = run(post(server.url + "/v1/completions", body))
        assert status == 400 and set(error) == ERROR_KEYS and error["object"] == "error", name
        assert error["code"] == 400 and error["message"], name
    status, error = run(post(server.url + "/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}))
    assert status == 400 and set(error) == ERROR_KEYS  # the shipped tokenizer has no chat template
