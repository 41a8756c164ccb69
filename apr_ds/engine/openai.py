"""The OpenAI-compatible endpoints as SGLang 0.5.23 serves them: GET /v1/models (http_server.py
`available_models`), POST /v1/completions (entrypoints/openai/serving_completions.py) and POST
/v1/chat/completions (serving_chat.py, text messages through the tokenizer's chat template; a 400 when it has none).

They run on the same engine as /generate: the request becomes `n` samples per prompt (streaming.Run, sharing the
prompt's cached prefix), answered at once or streamed as server-sent events with text deltas, then
`data: [DONE]`. Streamed usage comes as SGLang sends it: a last chunk with no choices, only when
`stream_options.include_usage` is set. Refusals are SGLang's ErrorResponse (openai_protocol.OpenAIError).
"""

from __future__ import annotations

import functools
import json
import time

from aiohttp import web

from apr_ds.engine import openai_protocol as oai
from apr_ds.engine import protocol
from apr_ds.engine.protocol import BadRequest
from apr_ds.engine.streaming import Run, partial_text, send_event, sse_stream


def openai_errors(handler):
    """Refusals in SGLang's OpenAI shape, whatever raised them (our /generate validation included)."""
    @functools.wraps(handler)
    async def wrapped(self, request: web.Request):
        try:
            return await handler(self, request)
        except oai.OpenAIError as e:
            return web.json_response(e.body(), status=e.code)
        except BadRequest as e:
            return web.json_response(oai.OpenAIError(str(e)).body(), status=400)
    return wrapped


class OpenAIHandlers:
    def __init__(self, handlers):
        self.handlers = handlers  # endpoints.Handlers: pause gate, limits, n limit
        self.engine = handlers.engine

    @property
    def model_name(self) -> str:
        return self.engine.model_dir  # SGLang's served_model_name defaults to the model path

    @openai_errors
    async def models(self, request: web.Request) -> web.Response:
        card = {"id": self.model_name, "object": "model", "created": int(time.time()), "owned_by": "sglang",
                "root": self.model_name, "parent": None, "max_model_len": self.handlers.limits.max_model_len + 2}
        return web.json_response({"object": "list", "data": [card]})

    @openai_errors
    async def completions(self, request: web.Request) -> web.StreamResponse:
        req = oai.parse(oai.CompletionRequest, await _json(request))
        prompts = oai.prompts_of(req, self.engine.tokenizer)
        run = await self.start(req, prompts, req.max_tokens, req.logprobs is not None)
        if req.stream:
            return await self.stream(request, req, run, "text_completion")
        outputs = [protocol.response(seq, self.engine.detokenizer, True) for seq in await run.finished(request)]
        ids = req.return_token_ids
        choices = [oai.completion_choice(i, o["text"], o["meta_info"],
                                         o["meta_info"].get("output_token_logprobs") if req.logprobs is not None
                                         else None, o["output_ids"] if ids else None,
                                         run.prompts[i // req.n] if ids else None) for i, o in enumerate(outputs)]
        return web.json_response(self.answer("text_completion", req, outputs, choices))

    @openai_errors
    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        req = oai.parse(oai.ChatCompletionRequest, await _json(request))
        if req.logprobs:
            raise oai.OpenAIError("logprobs on /v1/chat/completions are not supported by this server; "
                                  "use /v1/completions with logprobs=0")
        prompt = oai.chat_prompt(req, self.engine.tokenizer)
        run = await self.start(req, [prompt], req.max_completion_tokens or req.max_tokens, False)
        if req.stream:
            return await self.stream(request, req, run, "chat.completion.chunk")
        outputs = [protocol.response(seq, self.engine.detokenizer, True) for seq in await run.finished(request)]
        choices = [oai.chat_choice(i, o["text"], o["meta_info"]) for i, o in enumerate(outputs)]
        return web.json_response(self.answer("chat.completion", req, outputs, choices))

    async def start(self, req, prompts: list[list[int]], max_tokens: int | None, logprobs: bool) -> Run:
        """Validate as /generate would (SGLang turns both into a GenerateReqInput), then submit."""
        limits = self.handlers.limits
        params = protocol.parse_sampling_params(req.sampling_params(max_tokens), limits)
        for prompt in prompts:
            if not all(type(t) is int and 0 <= t < limits.vocab_size for t in prompt):
                raise oai.OpenAIError(f"the prompt holds token ids outside the vocabulary [0, {limits.vocab_size})")
            protocol.check_length(len(prompt), max_tokens, limits.max_model_len)
        self.handlers.check_n(req.n)
        await self.handlers.wait_unpaused()
        run = Run(self.engine, prompts, [params] * len(prompts), req.n, logprobs,
                  [req.rid] * len(prompts) if len(prompts) == 1 else None)
        await run.warm_prefix()
        run.submit()
        return run

    def answer(self, kind: str, req, outputs: list[dict], choices: list[dict]) -> dict:
        meta = outputs[0]["meta_info"]
        return oai.envelope(kind, meta["id"], req.model, choices, usage=oai.usage(outputs, req.n),
                            metadata={"weight_version": meta["weight_version"],
                                      "weight_versions": meta["weight_versions"]})

    async def stream(self, request: web.Request, req, run: Run, kind: str) -> web.StreamResponse:
        """serving_completions.py `_generate_completion_stream` / serving_chat.py `_generate_chat_stream`: a chunk per
        update with the text added since the last one (held back while it may be the start of a stop string)."""
        detokenizer, chat = self.engine.detokenizer, kind.startswith("chat")
        created, sent, logprobs_sent, ids_sent, outputs = int(time.time()), {}, {}, {}, {}
        async with sse_stream(request, run) as (sse, events):
            async for index, seq, count, finished in events:
                if finished:
                    out = outputs[index] = protocol.response(seq, detokenizer, True)
                    text, meta = out["text"], out["meta_info"]
                else:
                    text, meta = partial_text(detokenizer, seq, count), {"finish_reason": None}
                first = index not in sent
                if chat and first:  # serving_chat.py: the first chunk names the role
                    await send_event(sse, oai.envelope(kind, seq.rid, req.model, [
                        {"index": index, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                         "finish_reason": None, "matched_stop": None}], created, usage=None))
                delta, sent[index] = text[sent.get(index, 0):], len(text)
                if chat:
                    choice = {"index": index, "delta": {"role": None, "content": delta, "reasoning_content": None},
                              "logprobs": None, **oai.finish_fields(meta)}
                else:
                    token_logprobs = None
                    if req.logprobs is not None:
                        start = logprobs_sent.get(index, 0)
                        ids, lps = seq.output_ids[start:count], seq.output_logprobs[start:count]
                        token_logprobs = list(zip(lps, ids, detokenizer.token_texts(ids)))
                        logprobs_sent[index] = start + len(token_logprobs)
                    token_ids = prompt_ids = None
                    if req.return_token_ids:
                        start = ids_sent.get(index, 0)
                        token_ids, ids_sent[index] = seq.output_ids[start:count], count
                        prompt_ids = run.prompts[index // req.n] if first else None
                    choice = oai.completion_choice(index, delta, meta, token_logprobs, token_ids, prompt_ids)
                await send_event(sse, oai.envelope(kind, seq.rid, req.model, [choice], created, usage=None))
            if req.stream_options and req.stream_options.include_usage:
                ordered = [outputs[i] for i in sorted(outputs)]
                usage = {k: v for k, v in oai.usage(ordered, req.n).items() if v is not None}
                await send_event(sse, oai.envelope(kind, run.seqs[-1].rid, req.model, [], created, usage=usage))
        return sse


async def _json(request: web.Request):
    try:
        return json.loads(await request.read())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise oai.OpenAIError(f"malformed JSON: {e}", "Bad Request") from None
