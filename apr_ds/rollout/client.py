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

The weight-update protocol that drives these calls is apr_ds/weight_sync/receiver.py; this module holds only
the HTTP calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from apr_ds.cluster.messages import WEIGHT_GROUP_NAME
from apr_ds.errors import ServerError

__all__ = ["RolloutClient", "Generation", "ServerError", "wait_until_healthy"]


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

    async def wait_until_healthy(self, timeout_s: float = 120.0, poll_s: float = 0.2,
                                 alive: Callable[[], bool] | None = None) -> bool:
        """Poll /health until it answers 200 (True), or until `alive()` says the server process is gone (False).
        Past `timeout_s`, ServerError."""
        deadline = time.monotonic() + timeout_s
        while not await self.health():
            if alive is not None and not alive():
                return False
            if time.monotonic() > deadline:
                raise ServerError(None, f"{self.base_url} not healthy after {timeout_s:.0f} s")
            await asyncio.sleep(poll_s)
        return True

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
                                        world_size: int, backend: str, group_name: str = WEIGHT_GROUP_NAME) -> dict:
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
                                              weight_version: str | None = None, group_name: str = WEIGHT_GROUP_NAME,
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

    async def destroy_weights_update_group(self, group_name: str = WEIGHT_GROUP_NAME) -> dict:
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


def wait_until_healthy(url: str, timeout_s: float, alive: Callable[[], bool] | None = None) -> bool:
    """`RolloutClient.wait_until_healthy` for code outside an event loop (starting a server process)."""
    async def poll() -> bool:
        async with RolloutClient(url) as client:
            return await client.wait_until_healthy(timeout_s, alive=alive)
    return asyncio.run(poll())
