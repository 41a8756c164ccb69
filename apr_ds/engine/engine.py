"""The engine: model, KV pool, scheduler and weight updater, driven by one dedicated thread.

Forward passes never run on the asyncio event loop: the HTTP server stays responsive while the
engine thread computes. Other threads talk to the engine only through its inbox:
`submit(seq)` queues a request, `call(fn, ...)` runs `fn` on the engine thread between two steps
and returns a `concurrent.futures.Future`. Finished sequences are handed to `seq.on_finish`.

In-process use (tests, benchmarks):

    engine = Engine("path/to/hf_llama_dir", EngineConfig(num_threads=1)).start()
    [seq] = engine.generate([[1, 5, 9]], SamplingParams(max_new_tokens=8, temperature=0))
    print(seq.output_ids, seq.finish_reason())
    engine.shutdown()
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import queue
import threading
import uuid
from pathlib import Path
from typing import Callable

import torch

from apr_ds.config import EngineConfig
from apr_ds.engine.detokenizer import Detokenizer
from apr_ds.engine.kv_pool import KVPool
from apr_ds.engine.model import load_model
from apr_ds.engine.runner import ModelRunner
from apr_ds.engine.scheduler import Scheduler
from apr_ds.engine.sequence import SamplingParams, Sequence
from apr_ds.engine.weights import WeightUpdater
from apr_ds.errors import UserError

log = logging.getLogger(__name__)
_STOP = object()


class Engine:
    def __init__(self, model_dir: str | Path, config: EngineConfig | None = None):
        self.config = config = config or EngineConfig()
        self.model_dir = str(model_dir)
        if config.num_threads > 0:
            torch.set_num_threads(config.num_threads)
        self.model, self.hf_config = load_model(model_dir, config.dtype)
        self.tokenizer = _load_tokenizer(model_dir)
        self.vocab_size = self.hf_config.vocab_size
        self.max_model_len = _context_limit(self.hf_config, config)
        if config.kv_cache_tokens < self.max_model_len + 1:
            raise UserError(f"engine.kv_cache_tokens={config.kv_cache_tokens} cannot hold one full context of "
                            f"{self.max_model_len} tokens; raise it or lower engine.max_model_len")
        attn = self.model.model.layers[0].self_attn
        dtype = self.model.model.embed_tokens.weight.dtype
        self.pool = KVPool(len(self.model.model.layers), attn.num_kv_heads, attn.head_dim, config.kv_cache_tokens, dtype)
        self.detokenizer = Detokenizer(self.tokenizer)
        self.runner = ModelRunner(self.model, self.pool, seed=config.seed)
        if config.replay_file:  # a test instrument: recorded sequences decide the tokens (engine/replay.py)
            from apr_ds.engine.replay import ReplayRunner
            self.runner = ReplayRunner(config.replay_file, self.tokenizer, self.runner if config.replay_compute else None)
        self.scheduler = Scheduler(self.runner, self.pool, self.detokenizer, _eos_token_ids(model_dir, self.hf_config,
                                                                                          self.tokenizer), config)
        self.weights = WeightUpdater(self.model, self.scheduler, config.weight_sync_timeout_s)
        self._inbox: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="apr-ds-engine", daemon=True)

    # ------------------------------------------------------------------ thread-safe interface

    def start(self) -> "Engine":
        self._thread.start()
        return self

    def shutdown(self) -> None:
        if self._thread.is_alive():
            self._inbox.put(_STOP)
            self._thread.join()

    def submit(self, seq: Sequence) -> None:
        self._inbox.put(seq)

    def call(self, fn: Callable, *args, **kwargs) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._inbox.put((fn, args, kwargs, future))
        return future

    def new_sequence(self, prompt_ids: list[int], params: SamplingParams, return_logprob: bool = False,
                     rid: str | None = None, on_finish: Callable[[Sequence], None] | None = None) -> Sequence:
        """A request, its max_new_tokens clamped so that prompt + generation fits the context."""
        room = max(self.max_model_len - len(prompt_ids), 0)
        return Sequence(rid or uuid.uuid4().hex, list(prompt_ids), params, min(params.max_new_tokens, room),
                        return_logprob, on_finish)

    def generate(self, prompts: list[list[int]], params: SamplingParams, return_logprob: bool = False,
                 timeout: float | None = None) -> list[Sequence]:
        """Blocking convenience: run all prompts concurrently and return them finished, in order."""
        done = threading.Semaphore(0)
        seqs = [self.new_sequence(p, params, return_logprob, on_finish=lambda _: done.release()) for p in prompts]
        for seq in seqs:
            self.submit(seq)
        for _ in seqs:
            if not done.acquire(timeout=timeout):
                raise TimeoutError("generation did not finish in time")
        return seqs

    # ------------------------------------------------------------------ the engine thread

    def _loop(self) -> None:
        while True:
            try:
                item = self._inbox.get(block=not self.scheduler.has_work)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _STOP:
                    self.scheduler.abort_all("server shutting down")
                    return
                self._handle(item)
                item = self._inbox.get_nowait() if not self._inbox.empty() else None
            if self.scheduler.has_work:
                try:
                    self.scheduler.step()
                except Exception:  # answer every request rather than hang them; the log has the cause
                    log.exception("engine step failed; aborting all requests")
                    self.scheduler.abort_all("internal engine error (see the server log)")

    def _handle(self, item) -> None:
        if isinstance(item, Sequence):
            self.scheduler.add(item)
            return
        fn, args, kwargs, future = item
        if not future.set_running_or_notify_cancel():
            return
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as e:  # delivered to the caller, who decides
            future.set_exception(e)


def _context_limit(hf_config, config: EngineConfig) -> int:
    model_max = hf_config.max_position_embeddings
    if config.max_model_len > model_max:
        raise UserError(f"engine.max_model_len={config.max_model_len} exceeds the model's "
                        f"max_position_embeddings={model_max}")
    return config.max_model_len or model_max


def _load_tokenizer(model_dir):
    """The checkpoint's tokenizer, or None (then only `input_ids` requests work and no text is returned)."""
    if not any((Path(model_dir) / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return None
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(model_dir))


def _eos_token_ids(model_dir, hf_config, tokenizer) -> set[int]:
    """EOS ids from generation_config.json, the model config and the tokenizer, as transformers merges them."""
    ids: set[int] = set()
    generation_config = Path(model_dir) / "generation_config.json"
    sources = [json.loads(generation_config.read_text()).get("eos_token_id")] if generation_config.is_file() else []
    sources += [getattr(hf_config, "eos_token_id", None), getattr(tokenizer, "eos_token_id", None)]
    for value in sources:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list):
            ids.update(v for v in value if isinstance(v, int))
    return ids
