"""Scheduling control as RL uses it around a weight update, on both servers: pause in abort mode with a request
in flight, requests held while paused, flush, continue; and /abort_request. Every test leaves the server
generating (continue in a finally)."""

import asyncio
import time

from apr_ds.rollout.client import RolloutClient, ServerError

LONG = {"max_new_tokens": 700, "temperature": 0, "ignore_eos": True}  # seconds of decoding on either server
PROMPT = [1, 10, 30, 1116, 4, 54]  # "Moving to Node #0\nCurrent State: ..." of the trace language
ABORTED = {"type": "abort", "message": "Aborted", "status_code": None, "err_type": None}
WAIT_S = 60.0


async def wait_running(client, count: int) -> None:
    """Until the server reports `count` requests running (SGLang's /v1/loads; a bound on waiting, not a timing)."""
    deadline = time.monotonic() + WAIT_S
    while (await client.request("GET", "/v1/loads"))["loads"][0]["num_running_reqs"] != count:
        assert time.monotonic() < deadline, f"the server never reported {count} running requests"
        await asyncio.sleep(0.05)


async def still_pending(task, for_s: float = 1.0) -> bool:
    """True if `task` has not finished after `for_s` seconds (it is held, not merely slow to be answered)."""
    done, _ = await asyncio.wait([task], timeout=for_s)
    return not done


def test_pause_in_abort_mode_answers_the_running_request_and_holds_new_ones_until_continue(server):
    """pause(abort): the request in flight answers finish_reason abort with its partial output; a request sent
    while paused stays pending (a flush meanwhile succeeds) and completes after continue_generation."""
    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            running = asyncio.create_task(client.generate_tokens(PROMPT, LONG))
            await wait_running(client, 1)
            try:
                paused = await client.pause_generation("abort")
                aborted = await running
                held = asyncio.create_task(client.generate_tokens(PROMPT, {"max_new_tokens": 3, "temperature": 0}))
                pending = await still_pending(held)
                flushed = await client.request("POST", "/flush_cache", {})
            finally:
                resumed = await client.continue_generation()
            after = await client.generate_tokens(PROMPT, {"max_new_tokens": 3, "temperature": 0})
            return paused, aborted, pending, flushed, resumed, await held, after
    paused, aborted, pending, flushed, resumed, held, after = asyncio.run(main())
    assert paused == {"message": "Generation paused successfully.", "status": "ok"}
    assert aborted.meta_info["finish_reason"] == ABORTED
    assert 0 < len(aborted.output_ids) < LONG["max_new_tokens"] and len(aborted.logprobs) == len(aborted.output_ids)
    assert pending and flushed.startswith("Cache flushed.")
    assert resumed == {"message": "Generation continued successfully.", "status": "ok"}
    assert held.finish_reason == "length" and held.output_ids == after.output_ids and len(after.output_ids) == 3


def test_abort_request_ends_that_request_and_flush_waits_for_idle(server):
    """While a request runs /flush_cache is refused (400, the client polls on it); /abort_request with its rid
    answers it with abort and its partial output; then the server is idle and flushes."""
    async def main():
        async with RolloutClient(server.url, max_retries=0) as client:
            victim = asyncio.create_task(client.generate_tokens(PROMPT, LONG, rid="victim-1"))
            await wait_running(client, 1)
            try:
                with_running = await client.request("POST", "/flush_cache", {})
            except ServerError as e:
                with_running = e
            answer = await client.abort_request("victim-1")
            aborted = await victim
            await client.flush_cache(retry_for_s=WAIT_S)
            return with_running, answer, aborted
    with_running, answer, aborted = asyncio.run(main())
    assert isinstance(with_running, ServerError) and with_running.status == 400
    assert answer is None  # an empty 200
    assert aborted.meta_info["finish_reason"] == ABORTED and aborted.meta_info["id"] == "victim-1"
    assert 0 < len(aborted.output_ids) < LONG["max_new_tokens"]
