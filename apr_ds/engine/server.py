"""`apr-ds serve`: a Hugging Face Llama, Qwen2 or Qwen3 checkpoint on CPU, behind SGLang's HTTP protocol.

    apr-ds serve --model DIR [--host 127.0.0.1] [--port 30000] [--api-key K] [engine.key=value ...]
    python -m apr_ds.cli serve --model /tmp/tiny-llama engine.num_threads=2 engine.kv_cache_tokens=65536

    curl -s localhost:30000/generate -d '{"input_ids": [1, 5, 9], "sampling_params": {"max_new_tokens": 8,
         "temperature": 0}, "return_logprob": true}'

Endpoints (rl-systems.md §2): /generate, /health, /health_generate, /get_model_info (and /model_info), /v1/loads,
/flush_cache, /pause_generation, /continue_generation, /abort_request, /init_weights_update_group,
/begin_weight_update, /update_weights_from_distributed, /end_weight_update, /update_weights_from_disk,
/destroy_weights_update_group, /get_weights_by_name (handlers in endpoints.py), answering as SGLang 0.5.23 does
(tests/conformance runs the same tests against both); and /get_load, which SGLang 0.5.23 lacks. The forward
passes run on the engine thread (engine.py); the event loop only parses, queues and answers, so it stays
responsive while the model computes.

Also SGLang's /server_info (info.py) and the OpenAI-compatible /v1/models, /v1/completions and
/v1/chat/completions (openai.py). /generate and /v1 stream server-sent events with `stream: true` (streaming.py)
and take `n` samples per prompt up to engine.max_parallel_samples.

With --api-key every request must carry `Authorization: Bearer K`, except those SGLang lets through without it:
/health, /health_generate (any path starting /health, /ready or /metrics).
"""

from __future__ import annotations

import argparse
import hmac
import logging

from aiohttp import web

from apr_ds.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="a Hugging Face Llama, Qwen2 or Qwen3 checkpoint directory")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: loopback only)")
    parser.add_argument("--port", type=int, default=30000, help="port to listen on (SGLang's default 30000)")
    parser.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every request")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="engine settings, e.g. engine.num_threads=2")


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from apr_ds.config import load_config

    bad = [o for o in args.overrides if not o.startswith("engine.")]
    if bad:
        raise UserError(f"apr-ds serve takes engine.* overrides only, got {bad}")
    config = load_config(None, args.overrides).engine
    if not (Path(args.model) / "config.json").is_file():
        raise UserError(f"--model {args.model!r} is not a Hugging Face model directory (no config.json)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    from apr_ds.engine.engine import Engine  # torch and transformers: only once the arguments are fine
    engine = Engine(args.model, config).start()
    try:
        print(f"apr-ds serve: {args.model} on http://{args.host}:{args.port}", flush=True)
        web.run_app(build_app(engine, args.api_key), host=args.host, port=args.port, print=None,
                    access_log=None, handle_signals=True)
    except OSError as e:
        raise UserError(f"cannot listen on {args.host}:{args.port}: {e}") from None
    finally:
        engine.shutdown()
    return 0


def build_app(engine, api_key: str | None = None) -> web.Application:
    from apr_ds.engine.endpoints import Handlers, error_middleware

    app = web.Application(middlewares=[_auth_middleware(api_key), error_middleware], client_max_size=256 * 2**20)
    handlers = Handlers(engine)
    get_or_post = {"/flush_cache": handlers.flush_cache, "/get_weights_by_name": handlers.get_weights_by_name}
    for path, handler in get_or_post.items():
        app.router.add_get(path, handler)
        app.router.add_post(path, handler)
    app.router.add_get("/health", handlers.health)
    app.router.add_get("/health_generate", handlers.health_generate)
    app.router.add_get("/get_model_info", handlers.get_model_info)
    app.router.add_get("/model_info", handlers.get_model_info)
    app.router.add_get("/v1/loads", handlers.loads)
    app.router.add_get("/get_load", handlers.get_load)
    for name in ("generate", "pause_generation", "continue_generation", "abort_request", "init_weights_update_group",
                 "begin_weight_update", "update_weights_from_distributed", "end_weight_update",
                 "update_weights_from_disk", "destroy_weights_update_group"):
        app.router.add_post(f"/{name}", getattr(handlers, name))
    app.router.add_put("/generate", handlers.generate)
    from apr_ds.engine.info import server_info
    from apr_ds.engine.openai import OpenAIHandlers
    for path in ("/server_info", "/get_server_info"):
        app.router.add_get(path, lambda request: server_info(handlers, request))
    v1 = OpenAIHandlers(handlers)
    app.router.add_get("/v1/models", v1.models)
    app.router.add_post("/v1/completions", v1.completions)
    app.router.add_post("/v1/chat/completions", v1.chat_completions)
    return app


# SGLang lets these through without the key, matched by prefix, for probes and scrapers (utils/auth.py
# `decide_request_auth`)
OPEN_PREFIXES = ("/health", "/ready", "/metrics")


def _auth_middleware(api_key: str | None):
    expected = f"Bearer {api_key}".encode() if api_key else None

    @web.middleware
    async def auth(request: web.Request, handler):
        if request.method == "OPTIONS" or request.path.startswith(OPEN_PREFIXES):
            return await handler(request)
        if expected is not None and not hmac.compare_digest(request.headers.get("Authorization", "").encode(), expected):
            return web.json_response({"error": "Unauthorized"}, status=401)
        return await handler(request)
    return auth
