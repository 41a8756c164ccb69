"""The `openai` Python package against a real `apr-ds serve` on 127.0.0.1: completions (text, token ids, lists of
either), streamed completions, n samples, log-probs, chat through a chat template, and the SDK's errors for
refusals. The checkpoint is a copy of the shipped APR model whose tokenizer was given a simple chat template."""

import json
import shutil

import openai
import pytest
import torch

from engine_fixtures import serve
from servers import SHIPPED_APR

CHAT_TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
                 "{% if add_generation_prompt %}assistant:{% endif %}")
PROMPT = "Current State: 24:[3, 8, 2, 5], Operations: []\n"
MAX_SAMPLES = 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("templated-apr") / "apr"
    shutil.copytree(SHIPPED_APR, directory)
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config["chat_template"] = CHAT_TEMPLATE
    config_path.write_text(json.dumps(config))
    return directory


@pytest.fixture(scope="module")
def client(model_dir, tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with serve(model_dir, "engine.max_model_len=768", f"engine.max_parallel_samples={MAX_SAMPLES}",
               api_key="sk-test", log_path=log) as url:
        with openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0, timeout=120) as c:
            yield c


@pytest.fixture(scope="module")
def tokenizer(model_dir):
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(model_dir)


def test_models_and_completions(client, tokenizer):
    [model] = client.models.list().data
    answer = client.completions.create(model=model.id, prompt=PROMPT, max_tokens=12, temperature=0)
    [choice] = answer.choices
    assert answer.object == "text_completion" and choice.finish_reason in ("stop", "length") and choice.text
    ids = tokenizer.encode(PROMPT)  # text is tokenized with the tokenizer's special tokens, as SGLang does
    assert answer.usage.prompt_tokens == len(ids)
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens
    same = client.completions.create(model=model.id, prompt=ids, max_tokens=12, temperature=0)
    assert same.choices[0].text == choice.text
    batch = client.completions.create(model=model.id, prompt=[PROMPT, "Current State: 9"], max_tokens=4,
                                      temperature=0)
    assert [c.index for c in batch.choices] == [0, 1]
    assert choice.text.startswith(batch.choices[0].text)


def test_streamed_completion_is_the_answered_one(client):
    answer = client.completions.create(model="default", prompt=PROMPT, max_tokens=20, temperature=0)
    stream = client.completions.create(model="default", prompt=PROMPT, max_tokens=20, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == answer.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == answer.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == answer.usage.completion_tokens


def test_n_samples_and_their_limit(client):
    answer = client.completions.create(model="default", prompt=PROMPT, max_tokens=8, temperature=1.0, n=MAX_SAMPLES)
    assert sorted(c.index for c in answer.choices) == list(range(MAX_SAMPLES))
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="default", prompt=PROMPT, max_tokens=8, n=MAX_SAMPLES + 1)
    assert "max_parallel_samples" in refused.value.body["message"]


def test_logprobs_are_the_models(client, model_dir, tokenizer):
    answer = client.completions.create(model="default", prompt=PROMPT, max_tokens=6, temperature=0, logprobs=0)
    logprobs = answer.choices[0].logprobs
    assert "".join(logprobs.tokens) == answer.choices[0].text and len(logprobs.token_logprobs) == 6
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(1)
    hf = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompt = tokenizer.encode(PROMPT)
    with torch.no_grad():
        out = hf.generate(torch.tensor([prompt]), max_new_tokens=6, do_sample=False, pad_token_id=0,
                          output_scores=True, return_dict_in_generate=True)
    new = out.sequences[0, len(prompt):]
    expected = [torch.log_softmax(s[0].float(), -1)[t].item() for s, t in zip(out.scores, new)]
    assert logprobs.token_logprobs == pytest.approx(expected, abs=1e-4)


def test_chat_with_a_template(client):
    messages = [{"role": "user", "content": PROMPT}]
    answer = client.chat.completions.create(model="default", messages=messages, max_tokens=10, temperature=0)
    assert answer.object == "chat.completion"
    assert answer.choices[0].message.role == "assistant" and answer.choices[0].message.content
    stream = client.chat.completions.create(model="default", messages=messages, max_tokens=10, temperature=0,
                                            stream=True)
    deltas = [c.choices[0].delta for c in stream]
    assert deltas[0].role == "assistant"
    assert "".join(d.content or "" for d in deltas) == answer.choices[0].message.content


def test_refusals_are_bad_requests_and_serving_goes_on(client):
    for bad in ({"max_tokens": -1}, {"prompt": [1] * 900}, {"temperature": "hot"}, {"prompt": ""}):
        with pytest.raises(openai.BadRequestError) as refused:
            client.completions.create(**{"model": "default", "prompt": PROMPT, **bad})
        assert refused.value.status_code == 400 and refused.value.body["message"]
    assert client.completions.create(model="default", prompt=PROMPT, max_tokens=2).choices[0].text is not None
