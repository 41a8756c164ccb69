"""Request state: the sampling parameters of one request and the `Sequence` the scheduler moves around.

A sequence's tokens are `prompt_ids + output_ids`. Its KV lives in pool slots `slots[:num_kv]`, one
per token whose keys and values have been computed; the sequence holds one reference on each of
those slots (see kv_pool.py). While running, every token except the newest sampled one has KV, so
the next forward pass feeds exactly the tokens `all_ids[num_kv:]`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Literal

import torch

Status = Literal["waiting", "running", "finished"]
FinishType = Literal["stop", "length", "abort"]


@dataclass
class SamplingParams:
    """The SGLang `sampling_params` this engine implements (validated in protocol.py)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    """0 = greedy."""
    top_p: float = 1.0
    top_k: int = -1
    """-1 = no top-k cut."""
    stop: list[str] = field(default_factory=list)
    """Stop strings, matched on the detokenized output (they may span several tokens)."""
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    """Only affects the returned text."""
    no_stop_trim: bool = False
    """Keep the matched stop string / stop token in the returned text."""
    n: int = 1
    """Samples of the prompt (the request's n); each sample is its own Sequence."""

    @property
    def is_greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_k == 1


@dataclass(eq=False)
class Sequence:
    rid: str
    prompt_ids: list[int]
    params: SamplingParams
    max_new_tokens: int
    """`params.max_new_tokens` clamped so that prompt + output fits the context."""
    return_logprob: bool = False
    on_finish: Callable[["Sequence"], None] | None = None
    """Called once, on the engine thread, when the sequence finishes (any reason)."""
    on_token: Callable[["Sequence", int], None] | None = None
    """Streaming: called on the engine thread after each new token that did not finish the sequence, with the
    number of output tokens so far (a snapshot: the list may have grown by the time another thread reads it)."""

    output_ids: list[int] = field(default_factory=list)
    output_logprobs: list[float] = field(default_factory=list)
    status: Status = "waiting"
    finish_type: FinishType | None = None
    finish_matched: int | str | None = None
    finish_message: str | None = None
    cached_tokens: int = 0
    """Tokens whose KV came from the prefix cache instead of being computed, summed over prefills."""
    num_kv: int = 0
    kv_generation: int = -1
    """Weight generation the KV was computed with; KV of another generation never enters the cache."""
    kv_epoch: int = 0
    """Counts how often the KV was dropped (retraction); copies of it elsewhere are stale when it changed."""
    weight_version: str = ""
    """The weight version it finished under."""
    weight_version_events: list[tuple[str, int]] = field(default_factory=list)
    """(old version, output tokens so far) at each weight change while it was live, for `weight_versions`."""
    num_retractions: int = 0
    arrival_time: float = field(default_factory=time.perf_counter)
    finish_time: float | None = None
    slots: torch.Tensor = field(default_factory=lambda: torch.zeros(16, dtype=torch.long))

    def __post_init__(self):
        assert self.prompt_ids, "a request needs at least one prompt token"
        assert self.max_new_tokens >= 0, self.max_new_tokens

    # ------------------------------------------------------------------ derived state

    @property
    def all_ids(self) -> list[int]:
        return self.prompt_ids + self.output_ids

    @property
    def num_tokens(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)

    @property
    def kv_slots(self) -> torch.Tensor:
        return self.slots[:self.num_kv]

    @property
    def is_finished(self) -> bool:
        return self.status == "finished"

    @property
    def reached_length_limit(self) -> bool:
        return len(self.output_ids) >= self.max_new_tokens

    def check_invariants(self) -> None:
        assert 0 <= self.num_kv <= self.num_tokens, (self.num_kv, self.num_tokens)
        assert len(self.output_logprobs) == len(self.output_ids) or not self.return_logprob
        if self.status == "running":
            assert self.num_kv == self.num_tokens - 1, "a running sequence has KV for all but its newest token"
        if self.status == "waiting":
            assert self.num_kv == 0, "a waiting sequence holds no KV"
        assert (self.finish_type is not None) == self.is_finished

    # ------------------------------------------------------------------ KV slots

    def append_slots(self, new_slots: torch.Tensor) -> None:
        """Record the slots of the next `len(new_slots)` tokens; the caller holds their references."""
        needed = self.num_kv + len(new_slots)
        if needed > len(self.slots):
            grown = torch.zeros(max(needed, 2 * len(self.slots)), dtype=torch.long)
            grown[:self.num_kv] = self.kv_slots
            self.slots = grown
        self.slots[self.num_kv:needed] = new_slots
        self.num_kv = needed

    def drop_slots(self) -> torch.Tensor:
        """Forget all slots and return them, so the caller can cache or release them."""
        slots = self.kv_slots.clone()
        self.num_kv = 0
        self.kv_epoch += 1
        return slots

    # ------------------------------------------------------------------ outcome

    def finish(self, finish_type: FinishType, matched: int | str | None = None, message: str | None = None) -> None:
        assert not self.is_finished, f"request {self.rid} finished twice"
        self.status = "finished"
        self.finish_type, self.finish_matched, self.finish_message = finish_type, matched, message
        self.finish_time = time.perf_counter()

    def finish_reason(self) -> dict:
        """SGLang's `meta_info.finish_reason` (managers/schedule_batch.py, the `to_json` of FINISH_MATCHED_TOKEN,
        FINISH_MATCHED_STR, FINISH_LENGTH, FINISH_ABORT)."""
        if self.finish_type == "stop":
            return {"type": "stop", "matched": self.finish_matched}
        if self.finish_type == "length":
            return {"type": "length", "length": self.max_new_tokens}
        return {"type": "abort", "message": self.finish_message or "Aborted", "status_code": None, "err_type": None}

    def weight_versions(self) -> list[dict]:
        """SGLang's `meta_info.weight_versions`: which weight version wrote which output tokens [start, end)
        (utils/weight_versions.py `compute_weight_version_spans`)."""
        spans: list[dict] = []
        num_output = len(self.output_ids)
        for version, end in [*self.weight_version_events, (self.weight_version, num_output)]:
            end = min(end, num_output)
            if spans and end <= spans[-1]["end"]:
                continue
            if spans and version == spans[-1]["version"]:
                spans[-1]["end"] = end
                continue
            spans.append({"version": version, "start": spans[-1]["end"] if spans else 0, "end": end})
        return spans
