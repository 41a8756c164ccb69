"""The one asyncio client for an SGLang-protocol server: ours (`apr-ds serve`) or real SGLang.

    async with RolloutClient("http://127.0.0.1:30000") as client:
        gen = await client.generate_tokens([1, 5, 9], {"max_new_tokens": 64, "temperature": 1.0})
        gen.output_ids, gen.logprobs, gen.finish_reason, gen.weight_version

Token-in/token-out: we own tokenization, so prompts go as `input_ids` and we train on the returned
token ids and behaviour log-probs, never on re-tokenized text.

Every call has a timeout. Connection errors, timeouts and 5xx answers are retried a bounded number
of times with backoff; a 4xx is never retried (the request is wrong and resending will not fix it).
Weight-update calls are never retried either: a second POST would wait for broadcasts that the
learner will not send again. SGLang 0.5.23 takes updates only inside a session (`/begin_weight_update` ...
`/end_weight_update`); older servers have no such endpoints, so `weight_update_session` finds out which
protocol a server speaks from its first answer (404: none) and remembers it. `flush_cache` polls instead, because SGLang answers 400 until no
request is running.

The learner-side half of a weight update is at the bottom: `connect_weight_group` creates the
group as rank 0 while every server joins, and `push_weights` runs pause -> buckets -> flush -> continue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

DEFAULT_GROUP = "weight_update_group"


class ServerError(Exception):
    """The server answered with an error status (or could not be reached after all retries)."""

    def __init__(self, status: int | None, message: str):
        super().__init__(f"HTTP {status}: {message}" if status else message)
        self.status, self.message = status, message

    @property
    def is_length_refusal(self) -> bool:
        """The request did not fit the server's context: SGLang's three refusals (tokenizer_manager.py
        `_validate_one_request`, managers/utils.py `validate_input_length`), which our server gives too."""
        return self.status == 400 and any(phrase in self.message for phrase in _LENGTH_REFUSALS)


_LENGTH_REFUSALS = ("is longer than the model's context length", "exceeds the model's maximum context length",
                    "exceeds the maximum allowed length")


@dataclass
class Generation:
    """One finished /generate request, the fields an RL rollout needs."""

    output_ids: list[int]
    logprobs: list[float]
    """Behaviour log-probs of output_ids (empty when not requested)."""
    finish_reason: str
    """stop, length or abort."""
    matched: int | str | None
    weight_version: str
    prompt_tokens: int
    cached_tokens: int
    text: str
    meta_info: dict

    @classmethod
    def from_response(cls, response: dict) -> "Generation":
        meta = response.get("meta_info", {})
        token_logprobs = meta.get("output_token_logprobs") or []
        output_ids = response.get("output_ids")
        if output_ids is None:  # SGLang versions without output_ids: element 1 of each (logprob, id, text)
            output_ids = [entry[1] for entry in token_logprobs]
        finish = meta.get("finish_reason") or {}
        return cls(output_ids=list(output_ids), logprobs=[entry[0] for entry in token_logprobs],
                   finish_reason=finish.get("type", "abort"), matched=finish.get("matched"),
                   weight_version=str(meta.get("weight_version", "")), prompt_tokens=meta.get("prompt_tokens", 0),
                   cached_tokens=meta.get("cached_tokens", 0), text=response.get("text", ""), meta_info=meta)


class RolloutClient:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0,
                 connect_timeout_s: float = 10.0, max_retries: int = 3, backoff_s: float = 0.5):
        self.base_url = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.timeout_s, self.connect_timeout_s = timeout_s, connect_timeout_s
        self.max_retries, self.backoff_s = max_retries, backoff_s
        self._session: aiohttp.ClientSession | None = None
        self.speaks_weight_sessions: bool | None = None
        """Whether the server needs /begin_weight_update ... /end_weight_update around updates (None: not asked yet)."""

    async def __aenter__(self) -> "RolloutClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def request(self, method: str, path: str, body: dict | None = None, params: dict | None = None,
                      timeout_s: float | None = None, retries: int | None = None) -> Any:
        """One HTTP call: the decoded JSON (or text) on 2xx, else ServerError."""
        if self._session is None:
            self._session = aiohttp.ClientSession(headers=self.headers, connector=aiohttp.TCPConnector(limit=0))
        timeout = aiohttp.ClientTimeout(total=timeout_s or self.timeout_s, connect=self.connect_timeout_s)
        retries = self.max_retries if retries is None else retries
        for attempt in range(retries + 1):
            try:
                async with self._session.request(method, self.base_url + path, json=body, params=params,
                                                 timeout=timeout) as response:
                    payload = await _payload(response)
                    if response.status < 400:
                        return payload
                    error = ServerError(response.status, _message(payload))
                    if response.status < 500:
                        raise error  # 4xx: never retried
            except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, asyncio.TimeoutError) as e:
                error = ServerError(None, f"{method} {path} failed: {type(e).__name__}: {e}")
            if attempt < retries:
                await asyncio.sleep(self.backoff_s * 2 ** attempt)
        raise error

    # ------------------------------------------------------------------ generation

    async def generate(self, payload: dict) -> dict | list[dict]:
        """POST /generate with any SGLang payload; the raw response."""
        return await self.request("POST", "/generate", payload)

    async def generate_tokens(self, input_ids: list[int], sampling_params: dict | None = None,
                              rid: str | None = None, return_logprob: bool = True) -> Generation:
        payload = {"input_ids": list(input_ids), "sampling_params": sampling_params or {},
                   "return_logprob": return_logprob}
        if rid is not None:
            payload["rid"] = rid
        return Generation.from_response(await self.generate(payload))

    # ------------------------------------------------------------------ health and info

    async def health(self) -> bool:
        try:
            await self.request("GET", "/health", timeout_s=5.0, retries=0)
            return True
        except ServerError:
            return False

    async def wait_until_healthy(self, timeout_s: float = 120.0, poll_s: float = 0.2) -> None:
        deadline = time.monotonic() + timeout_s
        while not await self.health():
            if time.monotonic() > deadline:
                raise ServerError(None, f"{self.base_url} not healthy after {timeout_s:.0f} s")
            await asyncio.sleep(poll_s)

    async def health_generate(self) -> Any:
        return await self.request("GET", "/health_generate")

    async def get_model_info(self) -> dict:
        return await self.request("GET", "/get_model_info")

    # ------------------------------------------------------------------ scheduling control

    async def pause_generation(self, mode: str = "abort") -> Any:
        return await self.request("POST", "/pause_generation", {"mode": mode})

    async def continue_generation(self) -> Any:
        return await self.request("POST", "/continue_generation", {})

    async def abort_request(self, rid: str | None = None, abort_all: bool = False) -> Any:
        return await self.request("POST", "/abort_request", {"rid": rid or "", "abort_all": abort_all})

    async def flush_cache(self, retry_for_s: float = 60.0, poll_s: float = 0.5) -> None:
        """Flush the prefix cache, polling while the server refuses because requests are running."""
        deadline = time.monotonic() + retry_for_s
        while True:
            try:
                await self.request("POST", "/flush_cache", {})
                return
            except ServerError as e:
                if e.status != 400 or time.monotonic() > deadline:
                    raise
            await asyncio.sleep(poll_s)

    # ------------------------------------------------------------------ weights

    async def init_weights_update_group(self, master_address: str, master_port: int, rank_offset: int,
                                        world_size: int, backend: str, group_name: str = DEFAULT_GROUP) -> dict:
        """Join the weight group. `backend` has no default: it must be the one the learner's side uses."""
        return await self.request("POST", "/init_weights_update_group", {
            "master_address": master_address, "master_port": master_port, "rank_offset": rank_offset,
            "world_size": world_size, "group_name": group_name, "backend": backend}, retries=0)

    @contextlib.asynccontextmanager
    async def weight_update_session(self):
        """Updates from the weight group go inside this block; it opens and closes SGLang's session where the server
        has one, and is empty where it has not (a 404 on /begin_weight_update, remembered for this server)."""
        opened = False
        if self.speaks_weight_sessions is not False:
            try:
                await self.request("POST", "/begin_weight_update", {}, retries=0)
                opened = self.speaks_weight_sessions = True
            except ServerError as e:
                if e.status != 404:
                    raise
                self.speaks_weight_sessions = False
        try:
            yield
        finally:
            if opened:
                await self.request("POST", "/end_weight_update", {}, retries=0)

    async def update_weights_from_distributed(self, names: list[str], dtypes: list[str], shapes: list[list[int]],
                                              weight_version: str | None = None, group_name: str = DEFAULT_GROUP,
                                              flush_cache: bool = False) -> dict:
        body = {"names": names, "dtypes": dtypes, "shapes": shapes, "group_name": group_name,
                "flush_cache": flush_cache}
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        return await self.request("POST", "/update_weights_from_distributed", body, retries=0)

    async def update_weights_from_disk(self, model_path: str, weight_version: str | None = None) -> dict:
        body = {"model_path": model_path}
        if weight_version is not None:
            body["weight_version"] = str(weight_version)
        return await self.request("POST", "/update_weights_from_disk", body, retries=0)

    async def destroy_weights_update_group(self, group_name: str = DEFAULT_GROUP) -> dict:
        return await self.request("POST", "/destroy_weights_update_group", {"group_name": group_name})

    async def get_weights_by_name(self, name: str, truncate_size: int = 100) -> list:
        return await self.request("POST", "/get_weights_by_name", {"name": name, "truncate_size": truncate_size})


async def _payload(response: aiohttp.ClientResponse) -> Any:
    text = await response.text()
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def _message(payload: Any) -> str:
    if isinstance(payload, dict):
        error = payload.get("error")
        if isinstance(error, dict):
            return str(error.get("message", error))
        return str(error or payload.get("message") or payload)
    return str(payload)


# ---------------------------------------------------------------------------- learner side of weight updates


async def connect_weight_group(clients: list[RolloutClient], master_address: str, master_port: int,
                               group_name: str = DEFAULT_GROUP, backend: str | None = None,
                               ranks_per_server: list[int] | None = None, timeout_s: float = 300.0):
    """Create the weight group as rank 0 while every server joins at its rank offset (all at once:
    each side blocks in the rendezvous until the others arrive). Returns the learner's group."""
    from apr_ds.cluster import weight_group

    backend = backend or weight_group.default_backend()
    ranks_per_server = ranks_per_server or [1] * len(clients)  # an SGLang server joins with its TP size
    world_size = 1 + sum(ranks_per_server)
    offsets = [1 + sum(ranks_per_server[:i]) for i in range(len(clients))]
    joins = [c.init_weights_update_group(master_address, master_port, offset, world_size, backend, group_name)
             for c, offset in zip(clients, offsets)]
    group, *_ = await asyncio.gather(
        asyncio.to_thread(weight_group.init_weight_group, master_address, master_port, 0, world_size, group_name,
                          backend, timeout_s), *joins)
    return group


async def update_weights(clients: list[RolloutClient], bucket_metadata: list[dict], weight_version: str,
                         send_bucket: Callable[[int], None] | None = None, group_name: str = DEFAULT_GROUP,
                         pause_mode: str = "abort") -> None:
    """pause -> one /update_weights_from_distributed per bucket -> flush -> continue, on every server.

    `bucket_metadata[i]` holds bucket i's names/dtypes/shapes (`weight_group.bucket_metadata`).
    `send_bucket(i)` runs in a thread beside bucket i's POSTs: the broadcast, when this process is
    the sender; None when another process broadcasts (learner rank 0 while a rollout rank drives HTTP).
    Generation continues even if the update fails; the failure is raised after."""
    await asyncio.gather(*(c.pause_generation(pause_mode) for c in clients))
    try:
        async with contextlib.AsyncExitStack() as sessions:
            for c in clients:
                await sessions.enter_async_context(c.weight_update_session())
            for i, meta in enumerate(bucket_metadata):
                posts = [c.update_weights_from_distributed(**meta, weight_version=weight_version, group_name=group_name)
                         for c in clients]
                sends = [asyncio.to_thread(send_bucket, i)] if send_bucket is not None else []
                await asyncio.gather(*sends, *posts)
        await asyncio.gather(*(c.flush_cache() for c in clients))
    finally:
        await asyncio.gather(*(c.continue_generation() for c in clients))


async def push_weights(clients: list[RolloutClient], group, buckets: list[list[tuple[str, Any]]], weight_version: str,
                       group_name: str = DEFAULT_GROUP, pause_mode: str = "abort") -> None:
    """Learner rank 0 driving the servers itself: send `buckets` of (name, tensor) through `group`."""
    from apr_ds.cluster import weight_group

    def send_bucket(i: int) -> None:
        weight_group.broadcast_tensors(group, [tensor for _, tensor in buckets[i]])
    await update_weights(clients, [weight_group.bucket_metadata(b) for b in buckets], weight_version, send_bucket,
                         group_name, pause_mode)
