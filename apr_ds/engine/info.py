"""SGLang's /server_info (and its deprecated name /get_server_info): the startup configuration plus live state
(http_server.py `server_info`). SGLang's answer is its whole ServerArgs; this server answers the fields that have a
meaning here, under SGLang's names, with `internal_states` (one per data-parallel rank, as clients such as
bench_serving read it) and its own engine settings under `engine`.
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from apr_ds import __version__ as VERSION


async def server_info(handlers, request: web.Request) -> web.Response:
    engine, config = handlers.engine, handlers.engine.config

    def state() -> dict:
        s = handlers.scheduler
        return {"num_running_reqs": len(s.running), "num_waiting_reqs": len(s.waiting),
                "num_used_tokens": s.pool.num_used, "paused": s.paused, "weight_version": s.weight_version}
    return web.json_response({
        "model_path": engine.model_dir, "tokenizer_path": engine.model_dir if engine.tokenizer else None,
        "served_model_name": engine.model_dir, "context_length": handlers.limits.max_model_len + 2,
        "device": "cpu", "dtype": config.dtype, "max_running_requests": config.max_running_requests,
        "max_total_num_tokens": config.kv_cache_tokens, "chunked_prefill_size": config.max_batch_tokens,
        "disable_radix_cache": not config.prefix_cache, "random_seed": config.seed, "tp_size": 1, "dp_size": 1,
        "skip_tokenizer_init": engine.tokenizer is None, "stream_output": False,
        "internal_states": [await handlers.on_engine(state)], "version": VERSION, "frontend": "apr-ds",
        "engine": dataclasses.asdict(config),
    })
