"""`apr-ds serve` over real HTTP on 127.0.0.1: SGLang shapes, API key, bad requests, pause/abort/retract,
flush, weight reload from disk. One server process for the module, stopped by PID."""

import asyncio

import aiohttp
import pytest
import torch

from apr_ds.rollout.client import RolloutClient, ServerError
from engine_fixtures import run, save_model, serve, wait_for_load

KEY = "test-key"
GREEDY = {"temperature": 0, "ignore_eos": True}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    directory = tmp_path_factory.mktemp("served-llama")
    return directory, save_model(directory, max_position_embeddings=2048)


@pytest.fixture(scope="module")
def url(model, tmp_path_factory):
    with serve(model[0], api_key=KEY, log_path=tmp_path_factory.mktemp("log") / "serve.log") as url:
        yield url


def client(url, **kwargs):
    return RolloutClient(url, api_key=KEY, **kwargs)


def test_api_key_is_required_on_every_request_but_health(url):
    async def main():
        async with aiohttp.ClientSession() as session:
            for path in ("/health", "/health_generate"):  # SGLang lets probes through (utils/auth.py)
                async with session.get(url + path) as r:
                    assert r.status == 200
            for path in ("/get_model_info", "/get_load", "/model_info", "/server_info", "/v1/models"):
                async with session.get(url + path) as r:
                    assert r.status == 401
                async with session.get(url + path, headers={"Authorization": "Bearer wrong"}) as r:
                    assert r.status == 401
            for path in ("/generate", "/v1/completions"):
                async with session.post(url + path, json={"input_ids": [1, 2]}) as r:
                    assert r.status == 401
        async with client(url) as c:
            assert await c.health()
    run(main())


def test_generate_answers_in_sglang_shapes(url, model):
    _, hf = model

    async def main():
        async with client(url) as c:
            single = await c.generate({"input_ids": [1, 5, 9], "return_logprob": True, "return_text_in_logprobs": True,
                                       "sampling_params": {"max_new_tokens": 5, **GREEDY}})
            batch = await c.generate({"input_ids": [[1, 5, 9], [1, 6]], "rid": ["a", "b"],
                                      "sampling_params": [{"max_new_tokens": 3}, {"max_new_tokens": 4}]})
            text = await c.generate({"text": "Current State: 12", "sampling_params": {"max_new_tokens": 2, "n": 1}})
            return single, batch, text
    single, batch, text = run(main())
    meta = single["meta_info"]
    assert single["output_ids"] == hf.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=5, min_new_tokens=5,
                                               do_sample=False, pad_token_id=0)[0, 3:].tolist()
    assert meta["prompt_tokens"] == 3 and meta["completion_tokens"] == 5 and meta["cached_tokens"] == 0
    assert meta["finish_reason"] == {"type": "length", "length": 5}
    assert meta["weight_version"] == "default" and meta["e2e_latency"] >= 0
    assert [(t[1], len(t)) for t in meta["output_token_logprobs"]] == [(i, 3) for i in single["output_ids"]]
    assert all(t[0] <= 0 and isinstance(t[2], str) for t in meta["output_token_logprobs"])
    assert [b["meta_info"]["id"] for b in batch] == ["a", "b"]
    assert [b["meta_info"]["completion_tokens"] for b in batch] == [3, 4]
    assert text["meta_info"]["completion_tokens"] == 2 and isinstance(text["text"], str)


BAD_REQUESTS = {
    "token id out of vocabulary": {"input_ids": [1, 999999]},
    "negative token id": {"input_ids": [1, -3]},
    "token id not an integer": {"input_ids": [1, 2.5]},
    "empty prompt": {"input_ids": []},
    "absurd max_new_tokens": {"input_ids": [1], "sampling_params": {"max_new_tokens": 10**12}},
    "negative max_new_tokens": {"input_ids": [1], "sampling_params": {"max_new_tokens": -1}},
    "boolean max_new_tokens": {"input_ids": [1], "sampling_params": {"max_new_tokens": True}},
    "negative temperature": {"input_ids": [1], "sampling_params": {"temperature": -0.5}},
    "top_p zero": {"input_ids": [1], "sampling_params": {"top_p": 0}},
    "top_k zero": {"input_ids": [1], "sampling_params": {"top_k": 0}},
    "unknown sampling field": {"input_ids": [1], "sampling_params": {"temprature": 1.0}},
    "n over engine.max_parallel_samples": {"input_ids": [1], "sampling_params": {"n": 10**6}},
    "stream not a boolean": {"input_ids": [1], "stream": "yes"},
    "text and input_ids": {"input_ids": [1], "text": "a"},
    "neither text nor input_ids": {"sampling_params": {}},
    "prompt longer than the context": {"input_ids": [1] * 3000},
    "stop not a string": {"input_ids": [1], "sampling_params": {"stop": [3]}},
    "batch with a single rid": {"input_ids": [[1], [2]], "rid": "x"},
    "body not an object": [1, 2, 3],
}


def test_bad_requests_get_400_with_a_reason_and_the_server_keeps_serving(url):
    async def main():
        statuses = {}
        async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {KEY}"}) as session:
            bodies = {name: aiohttp.payload.JsonPayload(body) for name, body in BAD_REQUESTS.items()}
            bodies["malformed JSON"] = b'{"input_ids": [1, 2'
            bodies["pause mode"] = None
            for name, body in bodies.items():
                path = "/pause_generation" if name == "pause mode" else "/generate"
                data = aiohttp.payload.JsonPayload({"mode": "sideways"}) if body is None else body
                async with session.post(url + path, data=data) as r:
                    error = (await r.json())["error"]  # SGLang's contract gate answers {"error": text}
                    statuses[name] = (r.status, error["message"] if isinstance(error, dict) else error)
        async with client(url) as c:
            ok = await c.generate_tokens([1, 2, 3], {"max_new_tokens": 2})
            # an unknown top-level field is ignored, as SGLang ignores it (only sampling_params refuses them)
            ignored = await c.generate({"input_ids": [1, 2, 3], "bogus": 1, "sampling_params": {"max_new_tokens": 2}})
            assert len(ignored["output_ids"]) == 2
            mismatched = await _status(c.request("POST", "/update_weights_from_distributed",
                                                 {"names": ["a", "b"], "dtypes": ["float32"], "shapes": [[1]]}))
        return statuses, ok, mismatched
    statuses, ok, mismatched = run(main())
    for name, (status, reason) in statuses.items():
        assert status == 400 and reason, name
    assert "vocabulary" in statuses["token id out of vocabulary"][1]
    assert "malformed JSON" in statuses["malformed JSON"][1]
    assert len(ok.output_ids) == 2 and mismatched == 400


async def _status(coro):
    try:
        await coro
        return 200
    except ServerError as e:
        return e.status


def test_pause_in_abort_mode_answers_in_flight_requests_with_abort(url):
    async def main():
        async with client(url) as c:
            running = [asyncio.create_task(c.generate_tokens([1, 40 + i], {"max_new_tokens": 1500, **GREEDY}))
                       for i in range(3)]
            await wait_for_load(c, lambda load: load["num_reqs"] == 3)
            await c.pause_generation("abort")
            try:
                aborted = await asyncio.gather(*running)
                queued = asyncio.create_task(c.generate_tokens([1, 2], {"max_new_tokens": 3}))
                await wait_for_load(c, lambda load: load["num_waiting_reqs"] == 1)  # held, not dropped, while paused
            finally:
                await c.continue_generation()
            return aborted, await queued
    aborted, queued = run(main())
    assert [g.finish_reason for g in aborted] == ["abort"] * 3
    assert all(len(g.output_ids) < 1500 for g in aborted)
    assert queued.finish_reason == "length" and len(queued.output_ids) == 3


def test_pause_in_retract_mode_keeps_requests_and_resumes_them_after_continue(url):
    async def main():
        async with client(url) as c:
            reference = await c.generate_tokens([1, 77, 78], {"max_new_tokens": 300, **GREEDY})
            await c.flush_cache()
            task = asyncio.create_task(c.generate_tokens([1, 77, 78], {"max_new_tokens": 300, **GREEDY}))
            await wait_for_load(c, lambda load: load["num_reqs"] == 1)
            await c.pause_generation("retract")
            try:
                load = await wait_for_load(c, lambda load: load["num_reqs"] == 0)
                await c.flush_cache()  # retracted requests hold no KV, so flushing is allowed
            finally:
                await c.continue_generation()
            return reference, load, await task
    reference, load, resumed = run(main())
    assert load["num_waiting_reqs"] == 1
    assert resumed.finish_reason == "length" and resumed.output_ids == reference.output_ids


def test_flush_is_refused_while_requests_run_and_abort_request_answers_abort(url):
    async def main():
        async with client(url) as c:
            task = asyncio.create_task(c.generate_tokens([1, 90], {"max_new_tokens": 1500, **GREEDY}, rid="victim"))
            await wait_for_load(c, lambda load: load["num_reqs"] == 1)
            refused = await _status(c.request("POST", "/flush_cache", {}))
            health = await c.request("GET", "/health_generate")  # HTTP stays responsive during decoding
            await c.abort_request("victim")
            return refused, health, await task
    refused, health, aborted = run(main())
    assert refused == 400 and health is None  # /health_generate: an empty 200, as SGLang's
    assert aborted.finish_reason == "abort" and aborted.meta_info["finish_reason"]["message"]


def test_update_weights_from_disk_changes_outputs_and_weight_version(url, model, tmp_path):
    original_dir, _ = model
    other = save_model(tmp_path, max_position_embeddings=2048, seed=7)
    expected = other.generate(torch.tensor([[1, 5, 9]]), max_new_tokens=6, min_new_tokens=6, do_sample=False,
                              pad_token_id=0)[0, 3:].tolist()

    async def main():
        async with client(url) as c:
            result = await c.update_weights_from_disk(str(tmp_path), weight_version="disk-7")
            after = await c.generate_tokens([1, 5, 9], {"max_new_tokens": 6, **GREEDY})
            norm = await c.get_weights_by_name("model.norm.weight", truncate_size=10**6)
            refused = await _status(c.update_weights_from_disk(str(tmp_path / "missing")))
            info = await c.get_model_info()
            await c.update_weights_from_disk(str(original_dir), weight_version="back")
            return result, after, norm, refused, info
    result, after, norm, refused, info = run(main())
    assert result["success"] and after.weight_version == "disk-7" and info["weight_version"] == "disk-7"
    assert after.output_ids == expected
    assert torch.equal(torch.tensor(norm), other.model.norm.weight)
    assert refused == 400


def test_a_resumed_parent_hits_its_whole_context_over_http(url):
    """The answer comes only after the last token's KV is cached, so an immediate follow-up never races it."""
    async def main():
        async with client(url) as c:
            hits = []
            for i in range(3):
                prompt = [1] + list(range(100 + 50 * i, 140 + 50 * i))
                parent = await c.generate_tokens(prompt, {"max_new_tokens": 12, **GREEDY})
                resumed = await c.generate_tokens(prompt + parent.output_ids + [7, 8, 9], {"max_new_tokens": 2})
                hits.append((resumed.cached_tokens, len(prompt) + len(parent.output_ids)))
            return hits
    for cached, context in run(main()):
        assert cached == context
