"""Sampling runs followed token by token: `n` samples of a prompt sharing its cached prefix, their progress as
events on the event loop, and server-sent events (SSE) written to the client.

`Run` submits the sequences of a request and yields `(index, seq, count, finished)` events: `count` output tokens
are final (the engine thread reports each new token through `Sequence.on_token`; events that pile up while the
loop is busy are merged, only the newest count per sequence matters). A run that is closed before its sequences
finished (the client went away, an error) aborts them in the scheduler, which frees their KV.

`n > 1` follows SGLang's tokenizer_manager.py `_handle_batch_request`: each prompt is first prefilled once with
max_new_tokens 0, which puts it into the radix prefix cache, then its n samples are submitted; they find the whole
prompt cached (all but its last token, whose logits each sample needs).

`visible_text` is what may be shown of an unfinished output: never a part that could turn out to start a stop
string (a stop string split across two chunks is held back until it is known whether it completes), nor an
incomplete UTF-8 character.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import AsyncIterator

from aiohttp import web

from apr_ds.engine.sequence import SamplingParams, Sequence

DISCONNECT_POLL_S = 0.5  # how often a stream waiting for tokens checks that its client is still there
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class Run:
    def __init__(self, engine, prompts: list[list[int]], params: list[SamplingParams], n: int,
                 return_logprob: bool, rids: list[str | None] | None = None):
        self.engine, self.prompts, self.params, self.n = engine, prompts, params, n
        self.return_logprob = return_logprob
        self.rids = rids or [None] * len(prompts)
        self.seqs: list[Sequence] = []
        self.events: asyncio.Queue | None = None

    async def warm_prefix(self) -> None:
        """Prefill each prompt once (SGLang's parallel-sampling warmup) so that its n samples share its KV."""
        if self.n == 1 or not self.engine.config.prefix_cache:
            return
        warm = [SamplingParams(max_new_tokens=0, temperature=0.0, top_k=1) for _ in self.prompts]
        await asyncio.wrap_future(_gather(self.engine, self.prompts, warm))

    def submit(self) -> None:
        loop = asyncio.get_running_loop()
        self.events = asyncio.Queue()
        put = self.events.put_nowait
        for i, (prompt, params, rid) in enumerate(zip(self.prompts, self.params, self.rids)):
            for j in range(self.n):
                index = len(self.seqs)
                sample_rid = rid if self.n == 1 or rid is None else f"{rid}-{j}"
                seq = self.engine.new_sequence(prompt, params, self.return_logprob, sample_rid,
                                               on_finish=lambda s, k=index: _post(loop, put, (k, None)))
                seq.on_token = lambda s, count, k=index: _post(loop, put, (k, count))
                self.seqs.append(seq)
        for seq in self.seqs:
            self.engine.submit(seq)

    async def events_until_done(self, request: web.Request | None = None
                                ) -> AsyncIterator[tuple[int, Sequence, int, bool]]:
        """(index, seq, output tokens to show, finished), in the order the engine produced them."""
        pending = set(range(len(self.seqs)))
        try:
            while pending:
                first = await self._next(request)
                batch = [first] + [self.events.get_nowait() for _ in range(self.events.qsize())]
                latest: dict[int, int | None] = {}
                for index, count in batch:
                    if index in pending and latest.get(index, 0) is not None:
                        latest[index] = count  # None (finished) wins over any count
                for index, count in latest.items():
                    seq = self.seqs[index]
                    if count is None:
                        pending.discard(index)
                        yield index, seq, len(seq.output_ids), True
                    else:
                        yield index, seq, count, False
        finally:
            if pending:  # closed early: free the engine from what is still running
                self.abort([self.seqs[i] for i in pending])

    async def _next(self, request: web.Request | None):
        while True:
            try:
                return await asyncio.wait_for(self.events.get(), DISCONNECT_POLL_S if request else None)
            except asyncio.TimeoutError:
                if request is not None and (request.transport is None or request.transport.is_closing()):
                    raise ConnectionResetError("client disconnected") from None

    def abort(self, seqs: list[Sequence]) -> None:
        scheduler = self.engine.scheduler
        self.engine.call(lambda: [scheduler.abort(s, "client disconnected") for s in seqs])

    async def finished(self, request: web.Request | None = None) -> list[Sequence]:
        """Wait for every sequence (the non-streamed answer); ConnectionResetError (the sequences aborted) when the
        client of `request` leaves first."""
        async for _ in self.events_until_done(request):
            pass
        return self.seqs


def _gather(engine, prompts, params):
    """A concurrent future that completes when the given prompts are done (submitted from any thread)."""
    import concurrent.futures
    import threading
    future: concurrent.futures.Future = concurrent.futures.Future()
    left = [len(prompts)]
    lock = threading.Lock()

    def one_done(_seq):
        with lock:
            left[0] -= 1
            if left[0] == 0 and not future.done():
                future.set_result(None)
    for prompt, p in zip(prompts, params):
        engine.submit(engine.new_sequence(prompt, p, on_finish=one_done))
    return future


def _post(loop: asyncio.AbstractEventLoop, put, event) -> None:
    try:
        loop.call_soon_threadsafe(put, event)
    except RuntimeError:  # the loop is closed: the server is shutting down
        pass


def visible_text(text: str, stops: list[str]) -> str:
    """The part of an unfinished output's text that is certain: no trailing incomplete character, and no tail
    that is the beginning of a stop string."""
    text = text.rstrip("\ufffd")
    hold = 0
    for stop in stops:
        for k in range(min(len(stop) - 1, len(text)), hold, -1):
            if text.endswith(stop[:k]):
                hold = k
                break
    return text[:len(text) - hold]


def partial_text(detokenizer, seq: Sequence, count: int) -> str:
    return visible_text(detokenizer.decode(seq.output_ids[:count], seq.params.skip_special_tokens), seq.params.stop)


async def open_sse(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    await response.prepare(request)
    return response


@contextlib.asynccontextmanager
async def sse_stream(request: web.Request, run: "Run"):
    """An open SSE response and the run's events for the block, closed by `data: [DONE]`. A client that goes away
    ends the stream quietly: closing the events aborts its sequences."""
    sse = await open_sse(request)
    events = run.events_until_done(request)
    try:
        yield sse, events
        await send_done(sse)
    except ConnectionResetError:
        pass
    finally:
        await events.aclose()


async def send_event(response: web.StreamResponse, payload) -> None:
    data = payload if isinstance(payload, str) else json.dumps(payload)
    await response.write(f"data: {data}\n\n".encode())


async def send_done(response: web.StreamResponse) -> None:
    await response.write(b"data: [DONE]\n\n")
    await response.write_eof()


# ---------------------------------------------------------------------------- /generate, streamed


def partial_response(seq: Sequence, count: int, detokenizer, text_in_logprobs: bool) -> dict:
    """SGLang's chunk for an unfinished request (tokenizer_manager.py `_handle_batch_output`, stream without
    incremental_streaming_output): cumulative text and output_ids, meta_info without a finish_reason."""
    from apr_ds.engine.protocol import response
    out = response(seq, detokenizer, text_in_logprobs)
    meta = out["meta_info"]
    meta["finish_reason"] = None
    meta["completion_tokens"] = count
    if "output_token_logprobs" in meta:
        meta["output_token_logprobs"] = meta["output_token_logprobs"][:count]
        meta["output_token_logprobs_length"] = len(meta["output_token_logprobs"])
    for key in ("weight_versions", "e2e_latency"):  # SGLang's live chunks lack them
        meta.pop(key)
    out["text"] = partial_text(detokenizer, seq, count)
    out["output_ids"] = out["output_ids"][:count]
    return out


async def stream_generate(request: web.Request, run: Run, detokenizer, text_in_logprobs: bool,
                          indexed: bool) -> web.StreamResponse:
    """SGLang's streamed /generate (http_server.py `generate_request`): `data: {chunk}` per update, chunks of a
    batch or of n > 1 samples tagged with their "index" (`_stream_batch_responses`), then `data: [DONE]`."""
    from apr_ds.engine.protocol import response
    async with sse_stream(request, run) as (sse, events):
        async for index, seq, count, finished in events:
            out = (response(seq, detokenizer, text_in_logprobs) if finished
                   else partial_response(seq, count, detokenizer, text_in_logprobs))
            if finished:  # SGLang stamps the send time on the live chunks of a stream only
                out["meta_info"].pop("response_sent_to_client_ts")
            else:  # a live request reports the version serving it (set on a sequence when it finishes)
                out["meta_info"]["weight_version"] = run.engine.scheduler.weight_version
            if indexed:
                out["index"] = index
            await send_event(sse, out)
    return sse
