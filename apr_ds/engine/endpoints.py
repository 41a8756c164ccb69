"""One handler per SGLang endpoint (rl-systems.md §2), over an `Engine`.

Handlers parse and validate on the event loop and hand all engine work to the engine thread
(`Engine.submit` / `Engine.call`), so HTTP stays responsive during forward passes. Bad input raises
`BadRequest` (HTTP 400 with the reason); the other requests are unaffected.

Answers have SGLang 0.5.23's shapes and messages (srt/entrypoints/http_server.py), down to the plain-text
bodies of /flush_cache and the empty ones of /abort_request and /health_generate, so that what works against
this server works against SGLang. /get_load is this server's own (SGLang has /v1/loads, also served here).
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time

from aiohttp import web

from apr_ds.cluster.messages import WEIGHT_GROUP_NAME
from apr_ds.engine import protocol
from apr_ds.engine.protocol import BadRequest, check_fields
from apr_ds.engine.streaming import Run, stream_generate

log = logging.getLogger("apr_ds.serve")
HEALTH_GENERATE_TIMEOUT_S = 20.0  # SGLang's HEALTH_CHECK_TIMEOUT (http_server.py)
FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, "
           "the operation will not be performed.)\n")


@web.middleware
async def error_middleware(request: web.Request, handler):
    try:
        return await handler(request)
    except protocol.ContractError as e:
        return web.json_response({"error": str(e)}, status=400)
    except BadRequest as e:
        return web.json_response({"error": {"message": str(e)}}, status=400)
    except web.HTTPException:
        raise
    except ConnectionResetError:  # the client left before its answer (its sequences were aborted): nobody to tell
        return web.Response(status=499)
    except Exception as e:  # a bug must not take the server down; the other requests go on
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": {"message": f"internal error: {e}"}}, status=500)


async def read_body(request: web.Request, known: set[str], neutral: dict | None = None) -> dict:
    """The JSON object body (query parameters for GET); unknown fields are a 400."""
    if request.method == "GET" or not request.can_read_body:
        body = dict(request.query)
    else:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"malformed JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    check_fields(body, known, neutral, request.path.lstrip("/"))
    return body


class Handlers:
    def __init__(self, engine):
        self.engine = engine
        self.scheduler = engine.scheduler
        config = engine.config
        self.limits = protocol.Limits(engine.vocab_size, engine.max_model_len, config.default_max_new_tokens)
        # SGLang holds requests that arrive while generation is paused in its tokenizer manager, before tokenizing or
        # validating them (tokenizer_manager.py `generate_request` waits on `is_pause_cond`); so do we, here
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.held = 0

    async def on_engine(self, fn, *args):
        """Run `fn` on the engine thread, between two forward passes."""
        return await asyncio.wrap_future(self.engine.call(fn, *args))

    # ------------------------------------------------------------------ generation

    async def generate(self, request: web.Request) -> web.Response:
        try:
            body = json.loads(await request.read())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadRequest(f"malformed JSON: {e}") from None
        protocol.check_contract(body)
        await self.wait_unpaused()
        req = protocol.parse_generate(body, self.limits, self.engine.tokenizer)
        self.check_n(req.n)
        run = Run(self.engine, [item.prompt_ids for item in req.items], [item.params for item in req.items], req.n,
                  req.return_logprob, [item.rid for item in req.items])
        await run.warm_prefix()
        run.submit()
        is_list = req.is_batch or req.n > 1  # SGLang answers n > 1 samples of one prompt with a list, too
        if req.stream:
            return await stream_generate(request, run, self.engine.detokenizer, req.return_text_in_logprobs, is_list)
        seqs = await run.finished(request)
        outputs = [protocol.response(seq, self.engine.detokenizer, req.return_text_in_logprobs) for seq in seqs]
        return web.json_response(outputs if is_list else outputs[0])

    def check_n(self, n: int) -> None:
        limit = self.engine.config.max_parallel_samples
        if n > limit:
            raise BadRequest(f"n={n} samples per prompt is more than this server allows (engine.max_parallel_samples"
                             f"={limit})")

    async def wait_unpaused(self) -> None:
        if self.unpaused.is_set():
            return
        self.held += 1
        try:
            await self.unpaused.wait()
        finally:
            self.held -= 1

    async def run(self, req: protocol.GenerateRequest) -> list:
        loop = asyncio.get_running_loop()
        futures, seqs = [], []
        for item in req.items:
            future = loop.create_future()
            done = lambda seq, f=future: _deliver(loop, f, seq)  # noqa: E731
            seq = self.engine.new_sequence(item.prompt_ids, item.params, req.return_logprob, item.rid, done)
            futures.append(future)
            seqs.append(seq)
            self.engine.submit(seq)
        try:
            return await asyncio.gather(*futures)
        except asyncio.CancelledError:  # the client went away: free the engine from its requests
            self.engine.call(lambda: [self.scheduler.abort(s, "client disconnected") for s in seqs])
            raise

    async def health(self, request: web.Request) -> web.Response:
        return web.Response()

    async def health_generate(self, request: web.Request) -> web.Response:
        """SGLang's: one greedy token of prompt [0], an empty 200, or 503 when nothing came back in time (as while
        generation is paused: SGLang's request waits at the pause like any other, and so does this one)."""
        params = protocol.parse_sampling_params({"max_new_tokens": 1, "temperature": 0}, self.limits)
        req = protocol.GenerateRequest([protocol.GenerateItem([0], params, None)], False, False, False)

        async def generate_one():
            await self.wait_unpaused()
            await self.run(req)
        try:
            await asyncio.wait_for(generate_one(), HEALTH_GENERATE_TIMEOUT_S)
        except asyncio.TimeoutError:
            return web.Response(status=503)
        return web.Response()

    async def get_model_info(self, request: web.Request) -> web.Response:
        """SGLang's /model_info (/get_model_info is its deprecated name) for a text-only generation model."""
        engine = self.engine
        return web.json_response({
            "model_path": engine.model_dir, "served_model_name": engine.model_dir,
            "tokenizer_path": engine.model_dir if engine.tokenizer else None, "is_generation": True,
            "preferred_sampling_params": None, "weight_version": self.scheduler.weight_version,
            "load_format": "auto", "reasoning_parser": None, "tool_call_parser": None, "disaggregation_mode": "null",
            "has_image_understanding": False, "has_audio_understanding": False,
            "model_type": engine.hf_config.model_type, "architectures": list(engine.hf_config.architectures or []),
        })

    async def loads(self, request: web.Request) -> web.Response:
        """SGLang's /v1/loads (entrypoints/v1_loads.py), its core section, for one data-parallel rank."""
        def load() -> dict:
            s = self.scheduler
            return {"timestamp": time.time(), "dp_rank": 0, "num_running_reqs": len(s.running),
                    "num_waiting_reqs": len(s.waiting), "num_used_tokens": s.pool.num_used,
                    "max_total_num_tokens": self.engine.config.kv_cache_tokens,
                    "max_running_requests": self.engine.config.max_running_requests,
                    "token_usage": round(s.pool.num_used / self.engine.config.kv_cache_tokens, 4)}
        return web.json_response({"timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(),
                                  "accelerator": None, "num_accelerators": 1, "loads": [await self.on_engine(load)]})

    async def get_load(self, request: web.Request) -> web.Response:
        """This server's own (older SGLang had a /get_load; 0.5.23 has /v1/loads): requests running and waiting,
        KV slots in use. Requests held while paused (wait_unpaused) count as waiting, unlike in /v1/loads."""
        def load() -> list[dict]:
            s = self.scheduler
            return [{"dp_rank": 0, "num_reqs": len(s.running), "num_waiting_reqs": len(s.waiting) + self.held,
                     "num_tokens": s.pool.num_used, "paused": s.paused}]
        return web.json_response(await self.on_engine(load))

    # ------------------------------------------------------------------ scheduling control

    async def flush_cache(self, request: web.Request) -> web.Response:
        """SGLang answers in plain text: 200 when flushed, 400 when requests held it back."""
        await read_body(request, {"timeout"})
        if await self.on_engine(self.scheduler.flush_cache):
            return web.Response(text=FLUSHED)
        return web.Response(text="Flush cache failed.\n", status=400)

    async def pause_generation(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"mode"})
        mode = body.get("mode", "abort")
        if mode not in ("abort", "retract", "in_place"):
            raise BadRequest(f"mode must be abort, retract or in_place, got {mode!r}")
        self.unpaused.clear()  # before the engine pauses: nothing new gets in after the running requests stop
        await self.on_engine(self.scheduler.pause, mode)
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_generation(self, request: web.Request) -> web.Response:
        await read_body(request, {"torch_empty_cache"})
        await self.on_engine(self.scheduler.resume)
        self.unpaused.set()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    async def abort_request(self, request: web.Request) -> web.Response:
        """SGLang's (tokenizer_manager.py `abort_request`, scheduler.py `abort_request`): an empty 200 whatever
        happened; an empty rid without abort_all aborts nothing, an unknown rid nothing, a known rid every request
        whose rid starts with it. The aborted requests answer finish_reason abort, message "Aborted"."""
        body = await read_body(request, {"rid", "abort_all", "finished_reason", "abort_message"})
        rid, abort_all = str(body.get("rid") or ""), bool(body.get("abort_all", False))

        def abort() -> None:
            live = list(self.scheduler.waiting) + self.scheduler.running
            if not abort_all and (not rid or all(seq.rid != rid for seq in live)):
                return
            for seq in live:
                if abort_all or seq.rid.startswith(rid):
                    self.scheduler.abort(seq)
        await self.on_engine(abort)
        return web.Response()

    # ------------------------------------------------------------------ weights

    async def init_weights_update_group(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"master_address", "master_port", "rank_offset", "world_size", "group_name",
                                         "backend"})
        backend = body.get("backend", "nccl")
        if backend not in ("gloo", "nccl"):
            raise BadRequest(f"backend must be gloo or nccl, got {backend!r}")
        if backend == "nccl" and not _cuda_available():
            raise BadRequest("backend nccl needs GPUs; this CPU server joins weight groups with backend gloo")
        try:
            args = (str(body["master_address"]), int(body["master_port"]), int(body["rank_offset"]),
                    int(body["world_size"]), str(body.get("group_name", WEIGHT_GROUP_NAME)), backend)
        except (KeyError, TypeError, ValueError) as e:
            raise BadRequest(f"init_weights_update_group needs master_address, master_port, rank_offset, world_size: {e}")
        return await self.weight_call(self.engine.weights.init_group, *args)

    async def update_weights_from_distributed(self, request: web.Request) -> web.Response:
        from apr_ds.cluster.weight_group import parse_dtype
        body = await read_body(request, {"names", "dtypes", "shapes", "group_name", "flush_cache", "abort_all_requests",
                                         "weight_version", "torch_empty_cache"},
                               {"load_format": (None,), "selector": (None, "target", "all")})
        names, dtypes, shapes = body.get("names"), body.get("dtypes"), body.get("shapes")
        if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)
                and len(names) == len(dtypes) == len(shapes) and names):
            raise BadRequest("names, dtypes and shapes must be non-empty lists of the same length")
        try:
            dtypes = [parse_dtype(d) for d in dtypes]
        except ValueError as e:
            raise BadRequest(str(e)) from None
        if not all(isinstance(s, list) and all(type(d) is int and d >= 0 for d in s) for s in shapes):
            raise BadRequest("shapes must be lists of non-negative integers")
        version = body.get("weight_version")
        group = str(body.get("group_name", WEIGHT_GROUP_NAME))

        def update():
            if body.get("abort_all_requests"):
                self.scheduler.abort_all()
            return self.engine.weights.update_from_distributed(names, dtypes, shapes, group, version)
        return await self.weight_call(update)

    async def update_weights_from_disk(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"model_path", "weight_version", "abort_all_requests", "flush_cache",
                                         "torch_empty_cache"}, {"load_format": (None,)})
        if not isinstance(body.get("model_path"), str):
            raise BadRequest("model_path (a checkpoint directory) is required")

        def update():
            if body.get("abort_all_requests"):
                self.scheduler.abort_all()
            return self.engine.weights.update_from_disk(body["model_path"], body.get("weight_version"))
        return await self.weight_call(update)

    async def begin_weight_update(self, request: web.Request) -> web.Response:
        await read_body(request, set(), {"selector": ("all", "target")})
        return await self.weight_call(self.engine.weights.begin_update)

    async def end_weight_update(self, request: web.Request) -> web.Response:
        await read_body(request, set())
        return await self.weight_call(self.engine.weights.end_update)

    async def destroy_weights_update_group(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"group_name"})
        return await self.weight_call(self.engine.weights.destroy_group, str(body.get("group_name", WEIGHT_GROUP_NAME)))

    async def get_weights_by_name(self, request: web.Request) -> web.Response:
        body = await read_body(request, {"name", "truncate_size"})
        try:
            truncate_size = int(body.get("truncate_size", 100))
        except (TypeError, ValueError):
            raise BadRequest("truncate_size must be an integer") from None
        values = await self.on_engine(self.engine.weights.get_weights, str(body.get("name")), truncate_size)
        if values is None:  # SGLang logs which name it lacked and answers this
            log.warning("/get_weights_by_name: no parameter named %r", body.get("name"))
            raise BadRequest("Get parameter by name failed")
        return web.json_response(values)

    async def weight_call(self, fn, *args) -> web.Response:
        """SGLang's weight endpoints answer {success, message} with 200 or 400."""
        try:
            success, message = await self.on_engine(fn, *args)
        except Exception as e:  # e.g. a rendezvous or broadcast timeout
            log.exception("weight operation failed")
            success, message = False, f"{type(e).__name__}: {e}"
        return web.json_response({"success": success, "message": message}, status=200 if success else 400)


def _deliver(loop: asyncio.AbstractEventLoop, future: asyncio.Future, seq) -> None:
    """Hand a finished sequence from the engine thread to the waiting handler."""
    try:
        loop.call_soon_threadsafe(_resolve, future, seq)
    except RuntimeError:  # the loop is closed: the server is shutting down and nobody waits any more
        pass


def _resolve(future: asyncio.Future, seq) -> None:
    if not future.done():
        future.set_result(seq)


def _cuda_available() -> bool:
    import torch
    return torch.cuda.is_available()
