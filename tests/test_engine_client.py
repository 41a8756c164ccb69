"""The rollout client's HTTP behaviour: bounded retries on 5xx / connection errors / timeouts, never on 4xx,
flush polling, SGLang response parsing. The server here is a real aiohttp app on 127.0.0.1 that counts calls."""

import asyncio

import pytest
from aiohttp import web

from apr_ds.cluster.ports import free_port
from apr_ds.rollout.client import Generation, RolloutClient, ServerError
from engine_fixtures import run


class CountingServer:
    """Answers each path with a scripted list of statuses (the last one repeats) and counts the calls."""

    def __init__(self, script: dict[str, list[int]], delay_s: float = 0.0):
        self.script, self.delay_s, self.calls = script, delay_s, {}

    async def handle(self, request: web.Request) -> web.Response:
        path = request.path
        self.calls[path] = self.calls.get(path, 0) + 1
        statuses = self.script[path]
        status = statuses[min(self.calls[path], len(statuses)) - 1]
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return web.json_response({"error": {"message": f"scripted {status}"}} if status >= 400 else {"ok": True},
                                 status=status)

    async def __aenter__(self):
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self.runner = web.AppRunner(app)
        await self.runner.setup()
        self.port = free_port()
        await web.TCPSite(self.runner, "127.0.0.1", self.port).start()
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


def test_server_errors_are_retried_a_bounded_number_of_times():
    async def main():
        async with CountingServer({"/flaky": [503, 502, 200], "/down": [500]}) as server:
            async with RolloutClient(f"http://127.0.0.1:{server.port}", max_retries=3, backoff_s=0.01) as c:
                assert await c.request("GET", "/flaky") == {"ok": True}
                with pytest.raises(ServerError) as err:
                    await c.request("GET", "/down")
            return server.calls, err.value.status
    calls, status = run(main())
    assert calls == {"/flaky": 3, "/down": 4} and status == 500


def test_client_errors_are_never_retried():
    async def main():
        async with CountingServer({"/generate": [400], "/update_weights_from_distributed": [503]}) as server:
            async with RolloutClient(f"http://127.0.0.1:{server.port}", max_retries=5, backoff_s=0.01) as c:
                with pytest.raises(ServerError) as bad:
                    await c.generate({"input_ids": [1]})
                with pytest.raises(ServerError):  # a retry would wait for broadcasts nobody sends again
                    await c.update_weights_from_distributed(["w"], ["float32"], [[1]])
            return server.calls, bad.value
    calls, error = run(main())
    assert calls == {"/generate": 1, "/update_weights_from_distributed": 1}
    assert error.status == 400 and "scripted 400" in str(error)


def test_unreachable_servers_and_timeouts_fail_after_the_retries():
    async def main():
        async with RolloutClient(f"http://127.0.0.1:{free_port()}", max_retries=2, backoff_s=0.01) as c:
            with pytest.raises(ServerError, match="ClientConnectorError"):
                await c.get_model_info()
            assert not await c.health()
        async with CountingServer({"/slow": [200]}, delay_s=2.0) as server:
            async with RolloutClient(f"http://127.0.0.1:{server.port}", max_retries=1, backoff_s=0.01) as c:
                with pytest.raises(ServerError, match="TimeoutError"):
                    await c.request("GET", "/slow", timeout_s=0.2)
            return server.calls
    assert run(main()) == {"/slow": 2}


def test_flush_cache_polls_while_the_server_refuses():
    async def main():
        async with CountingServer({"/flush_cache": [400, 400, 200]}) as server:
            async with RolloutClient(f"http://127.0.0.1:{server.port}") as c:
                await c.flush_cache(retry_for_s=30, poll_s=0.01)
            return server.calls
    assert run(main()) == {"/flush_cache": 3}


def test_generation_parses_sglang_responses_with_and_without_output_ids():
    meta = {"finish_reason": {"type": "stop", "matched": 2}, "weight_version": "7", "prompt_tokens": 4,
            "cached_tokens": 3, "output_token_logprobs": [[-0.5, 11, None], [-1.25, 2, None]]}
    sglang_style = Generation.from_response({"text": "x", "meta_info": meta})
    ours = Generation.from_response({"text": "x", "output_ids": [11, 2], "meta_info": meta})
    for g in (sglang_style, ours):
        assert g.output_ids == [11, 2] and g.logprobs == [-0.5, -1.25]
        assert (g.finish_reason, g.matched, g.weight_version, g.cached_tokens) == ("stop", 2, "7", 3)
