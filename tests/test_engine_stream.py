"""Streaming and sampling on a real `apr-ds serve` (the shipped APR checkpoint) on 127.0.0.1: stop strings split
across chunks, a client that goes away, pause in abort mode, n samples sharing the prompt's cache, malformed
requests (a seeded fuzz of 5,000 bodies), and SGLang's own bench_serving run against it."""

import asyncio
import json
import random
import re
import subprocess

import aiohttp
import pytest

from engine_fixtures import ENV, run, serve, wait_for_load
from servers import SHIPPED_APR, sglang_python
from apr_ds.rollout.client import RolloutClient

PROMPT_TEXT = "Current State: 24:[3, 8, 2, 5], Operations: []\n"


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    log = tmp_path_factory.mktemp("log") / "serve.log"
    with serve(SHIPPED_APR, "engine.max_model_len=768", "engine.max_parallel_samples=8", log_path=log) as url:
        yield url


async def sse(session, url, body, keep=None):
    """The parsed `data:` payloads of a stream, up to [DONE] (which must come last)."""
    events = []
    async with session.post(url, json=body) as r:
        assert r.status == 200, await r.text()
        async for line in r.content:
            if line.strip():
                events.append(line.strip()[len(b"data: "):].decode())
                if keep is not None and len(events) >= keep:
                    return [json.loads(e) for e in events]
    assert events[-1] == "[DONE]"
    return [json.loads(e) for e in events[:-1]]


async def post(session, url, body):
    async with session.post(url, json=body) as r:
        return r.status, await r.json(content_type=None)


def test_stop_string_split_across_chunks_is_never_streamed(url):
    async def main():
        async with aiohttp.ClientSession() as s:
            greedy = {"text": PROMPT_TEXT, "sampling_params": {"max_new_tokens": 40, "temperature": 0}}
            _, free = await post(s, url + "/generate", greedy)
            # a stop string made of the end of one token and the start of the next, first seen there
            from transformers import AutoTokenizer
            tok = AutoTokenizer.from_pretrained(SHIPPED_APR)
            texts = [tok.decode(free["output_ids"][:k]) for k in range(len(free["output_ids"]) + 1)]
            stop = next(t[len(a) - 1:len(a) + 1] for a, t in zip(texts[1:], texts[2:])
                        if len(t) > len(a) > 0 and t.find(t[len(a) - 1:len(a) + 1]) == len(a) - 1)
            body = {**greedy, "sampling_params": {**greedy["sampling_params"], "stop": stop}}
            _, answered = await post(s, url + "/generate", body)
            chunks = await sse(s, url + "/generate", {**body, "stream": True})
            v1 = {"prompt": PROMPT_TEXT, "max_tokens": 40, "temperature": 0, "stop": [stop]}
            _, v1_answer = await post(s, url + "/v1/completions", v1)
            v1_chunks = await sse(s, url + "/v1/completions", {**v1, "stream": True})
            return stop, free, answered, chunks, v1_answer, v1_chunks
    stop, free, answered, chunks, v1_answer, v1_chunks = run(main())
    assert answered["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert answered["text"] == free["text"][:free["text"].find(stop)]
    assert chunks[-1]["text"] == answered["text"] and chunks[-1]["output_ids"] == answered["output_ids"]
    assert all(answered["text"].startswith(c["text"]) for c in chunks)  # nothing past the stop, ever
    assert v1_answer["choices"][0]["text"] == answered["text"]
    assert "".join(c["choices"][0]["text"] for c in v1_chunks) == answered["text"]
    assert v1_chunks[-1]["choices"][0]["matched_stop"] == stop


def test_client_disconnect_frees_its_sequences(url):
    async def main():
        body = {"text": PROMPT_TEXT, "stream": True,
                "sampling_params": {"max_new_tokens": 700, "temperature": 0, "ignore_eos": True, "n": 2}}
        async with RolloutClient(url) as c:
            async with aiohttp.ClientSession() as s:
                async with s.post(url + "/generate", json=body) as r:
                    first = [await r.content.readline() for _ in range(4)]  # two events, then leave
                    running = await wait_for_load(c, lambda load: load["num_reqs"] == 2)
                    # frozen in place, the samples cannot finish by themselves: only the abort can free them
                    await c.pause_generation("in_place")
            try:
                load = await wait_for_load(c, lambda load: load["num_reqs"] == 0 and load["num_waiting_reqs"] == 0)
            finally:
                await c.continue_generation()
        return first, running, load
    first, running, load = run(main())
    assert first[0].startswith(b"data: {") and running["num_reqs"] == 2 and load["num_reqs"] == 0


def test_pause_in_abort_mode_ends_open_streams_with_abort(url):
    async def main():
        async with aiohttp.ClientSession() as s, RolloutClient(url) as c:
            body = {"prompt": PROMPT_TEXT, "max_tokens": 700, "temperature": 0, "ignore_eos": True, "stream": True}
            streams = [asyncio.create_task(sse(s, url + "/v1/completions", body)),
                       asyncio.create_task(sse(s, url + "/generate", {"text": PROMPT_TEXT, "stream": True,
                                                                      "sampling_params": {"max_new_tokens": 700,
                                                                                          "ignore_eos": True}}))]
            await wait_for_load(c, lambda load: load["num_reqs"] == 2)
            await c.pause_generation("abort")
            try:
                v1_chunks, generate_chunks = await asyncio.gather(*streams)
            finally:
                await c.continue_generation()
            return v1_chunks, generate_chunks
    v1_chunks, generate_chunks = run(main())
    assert v1_chunks[-1]["choices"][0]["finish_reason"] == "abort"
    assert generate_chunks[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert len(generate_chunks[-1]["output_ids"]) < 700


def test_n_samples_share_the_prompt_cache(url):
    async def main():
        async with aiohttp.ClientSession() as s:
            prompt = [1] + [random.Random(3).randrange(10, 500) for _ in range(60)]
            body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 4, "temperature": 1.0, "n": 4}}
            return prompt, await post(s, url + "/generate", body)
    prompt, (status, samples) = run(main())
    assert status == 200 and len(samples) == 4
    # the warmup prefilled the prompt; every sample found all of it but the last token cached
    assert all(s["meta_info"]["cached_tokens"] == len(prompt) - 1 for s in samples)


def _fuzz_bodies(count, seed=1234):
    """Malformed (or borderline) requests: valid bodies with fields replaced by junk, dropped or added, and broken
    JSON. Valid survivors ask for at most a few tokens, so every request is cheap."""
    rng = random.Random(seed)
    junk = [None, True, -1, 0, 10**12, -1e300, 1.5, "", "x" * 50, [], [None], [[]], {}, {"a": 1}, [1, "a"],
            [-5], [10**9], "\ud800", 1e308, [1] * 900]
    bases = [("/generate", {"input_ids": [1, 5, 9], "sampling_params": {"max_new_tokens": 2, "temperature": 0}}),
             ("/generate", {"text": "Current State: 1", "stream": True, "sampling_params": {"max_new_tokens": 2}}),
             ("/v1/completions", {"prompt": [1, 5, 9], "max_tokens": 2, "temperature": 0}),
             ("/v1/completions", {"prompt": "Current", "max_tokens": 2, "stream": True, "n": 2}),
             ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2})]
    for _ in range(count):
        path, body = rng.choice(bases)
        body = json.loads(json.dumps(body))
        for _ in range(rng.randint(1, 3)):
            inner = body.get("sampling_params")
            target = inner if isinstance(inner, dict) and rng.random() < 0.5 else body
            keys = list(target) + ["n", "stop", "top_p", "top_k", "logprobs", "stream", "max_tokens", "bogus"]
            key, action = rng.choice(keys), rng.random()
            if action < 0.7:
                target[key] = rng.choice(junk)
            elif action < 0.85:
                target.pop(key, None)
            else:
                body = rng.choice(junk)
                break
        data = json.dumps(body).encode()
        if rng.random() < 0.1:
            data = data[:rng.randrange(len(data) + 1)] + bytes(rng.randrange(256) for _ in range(rng.randint(0, 4)))
        yield path, data


def test_fuzzed_requests_are_all_answered_without_server_errors(url):
    async def main():
        statuses = {}
        queue = list(_fuzz_bodies(5000))
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as s:
            async def worker():
                while queue:
                    path, data = queue.pop()
                    async with s.post(url + path, data=data, headers={"Content-Type": "application/json"}) as r:
                        await r.read()
                        statuses[r.status] = statuses.get(r.status, 0) + 1
            await asyncio.gather(*(worker() for _ in range(16)))
            status, ok = await post(s, url + "/generate", {"input_ids": [1, 2],
                                                           "sampling_params": {"max_new_tokens": 1}})
        return statuses, status, ok
    statuses, status, ok = run(main())
    assert sum(statuses.values()) == 5000
    assert all(code in (200, 400) for code in statuses), statuses
    assert status == 200 and len(ok["output_ids"]) == 1


@pytest.mark.parametrize("backend", ["sglang", "sglang-oai"])
def test_sglang_bench_serving_runs_against_this_server(url, backend, tmp_path):
    """SGLang's own load generator, unmodified, streamed: every request succeeds."""
    cmd = [sglang_python(), "-m", "sglang.bench_serving", "--backend", backend, "--base-url", url,
           "--dataset-name", "random-ids", "--tokenizer", str(SHIPPED_APR), "--num-prompts", "20",
           "--random-input-len", "32", "--random-output-len", "16", "--output-file", str(tmp_path / "out.jsonl")]
    out = subprocess.run(cmd, env={**ENV, "HF_HUB_OFFLINE": "1"}, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert re.search(r"Successful requests:\s+20\b", out.stdout), out.stdout[-3000:]
    assert json.loads((tmp_path / "out.jsonl").read_text().splitlines()[-1])["completed"] == 20
