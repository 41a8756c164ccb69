"""Continuous batching: which sequences run in the next forward pass, and what happens after it.

Each `step()` is one forward pass. Waiting sequences are prefilled first (FCFS, up to
`max_batch_tokens` new tokens and `max_running_requests` sequences, reusing cached prefixes);
otherwise every running sequence decodes one token together. Requests join and leave the running
batch at every step. When the KV pool runs out, unused cached prefixes are evicted first, then the
newest running sequence is retracted to the front of the queue (its KV stays in the prefix cache,
so resuming it is cheap).

A finished sequence's newest token has no KV yet. So that a parent resuming with prompt + output +
join text hits the cache for its whole context, a finished sequence rides along in the next step as
one extra row whose logits are ignored, is cached after it, and only then answered: a follow-up
request, sent after the answer, always finds the whole context cached.

Everything here runs on the engine thread (engine.py); nothing is locked.
"""

from __future__ import annotations

from collections import deque

import torch

from apr_ds.config import EngineConfig
from apr_ds.engine.detokenizer import Detokenizer
from apr_ds.engine.kv_pool import KVPool
from apr_ds.engine.prefix_cache import RadixCache
from apr_ds.engine.runner import ModelRunner
from apr_ds.engine.sequence import Sequence


class Scheduler:
    def __init__(self, runner: ModelRunner, pool: KVPool, detokenizer: Detokenizer, eos_token_ids: set[int],
                 config: EngineConfig):
        self.runner, self.pool, self.detokenizer, self.config = runner, pool, detokenizer, config
        self.cache = RadixCache(pool) if config.prefix_cache else None
        self.eos_token_ids = eos_token_ids
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.finishing: list[Sequence] = []  # finished; KV of their newest token is computed next step
        self.paused = False
        self.generation = 0          # bumped on every weight change; stale KV never enters the cache
        self.weight_version = "default"

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    @property
    def has_work(self) -> bool:
        return not self.paused and bool(self.waiting or self.running or self.finishing)

    # ------------------------------------------------------------------ one step

    def step(self) -> None:
        prefill = self._schedule_prefill()
        seqs, num_new = prefill or self._schedule_decode()
        tails = self._schedule_finishing()
        samples = [seq.max_new_tokens > 0 for seq in seqs] + [False] * len(tails)
        if not seqs and not tails:
            return
        tokens, logprobs = self.runner.run(seqs + tails, num_new + [1] * len(tails), samples)
        for seq in tails:
            self._retire(seq)
        if prefill and self.cache is not None:
            for seq in seqs:  # cache prompts now, so identical prompts arriving later share them
                self.cache.insert(seq.all_ids[:seq.num_kv], seq.kv_slots)
        sampled = iter(zip(tokens, logprobs))
        for seq, do_sample in zip(seqs, samples):
            if do_sample:
                self._append(seq, *next(sampled))
            else:
                self._finish(seq, "length")

    def _schedule_prefill(self) -> tuple[list[Sequence], list[int]] | None:
        seqs, num_new, budget = [], [], self.config.max_batch_tokens
        while self.waiting and len(self.running) < self.config.max_running_requests:
            seq = self.waiting[0]
            prefix = self._match_prefix(seq)
            n = seq.num_tokens - len(prefix)
            if seqs and n > budget:
                break
            self.pool.retain(prefix)  # before allocating, so eviction cannot take the prefix away
            # keep one slot per running sequence free for the next decode step
            slots = self._alloc(n, headroom=len(self.running) + 1)
            if slots is None:
                self.pool.release(prefix)
                break
            self.waiting.popleft()
            seq.append_slots(torch.cat([prefix, slots]))
            seq.cached_tokens += len(prefix)
            seq.kv_generation = self.generation
            seq.status = "running"
            self.running.append(seq)
            seqs.append(seq)
            num_new.append(n)
            budget -= n
        return (seqs, num_new) if seqs else None

    def _schedule_decode(self) -> tuple[list[Sequence], list[int]]:
        slots = self._alloc(len(self.running))  # the common case: one slot for everyone, in one go
        if slots is not None:
            for seq, slot in zip(self.running, slots):
                seq.append_slots(slot[None])
            return list(self.running), [1] * len(self.running)
        seqs = []
        for seq in list(self.running):  # short of memory: oldest first; the newest are retracted first
            if seq.status != "running":
                continue
            slot = self._alloc(1)
            while slot is None:
                victim = self.running[-1]
                self.retract(victim)
                if victim is seq:
                    break
                slot = self._alloc(1)
            if slot is not None:
                seq.append_slots(slot)
                seqs.append(seq)
        return seqs, [1] * len(seqs)

    def _schedule_finishing(self) -> list[Sequence]:
        tails, self.finishing = self.finishing, []
        ready = []
        for seq in tails:
            slot = self._alloc(1)
            if slot is None:
                self._retire(seq)  # no room: cache without the newest token
            else:
                seq.append_slots(slot)
                ready.append(seq)
        return ready

    def _match_prefix(self, seq: Sequence) -> torch.Tensor:
        if self.cache is None:
            return torch.zeros(0, dtype=torch.long)
        # at least one token must be computed: its logits give the next token
        return self.cache.match_prefix(seq.all_ids)[:seq.num_tokens - 1]

    def _alloc(self, n: int, headroom: int = 0) -> torch.Tensor | None:
        shortfall = n + headroom - self.pool.num_free
        if shortfall > 0 and self.cache is not None:
            self.cache.evict(shortfall)
        if self.pool.num_free < n + headroom:
            return None
        return self.pool.alloc(n)

    # ------------------------------------------------------------------ after the forward pass

    def _append(self, seq: Sequence, token: int, logprob: float) -> None:
        seq.output_ids.append(token)
        if seq.return_logprob:
            seq.output_logprobs.append(logprob)
        params = seq.params
        if token in params.stop_token_ids or (not params.ignore_eos and token in self.eos_token_ids):
            self._finish(seq, "stop", matched=token)
        elif (stop := self.detokenizer.matched_stop_string(seq)) is not None:
            self._finish(seq, "stop", matched=stop)
        elif seq.reached_length_limit:
            self._finish(seq, "length")
        elif seq.on_token is not None:
            seq.on_token(seq, len(seq.output_ids))

    def _finish(self, seq: Sequence, finish_type: str, matched=None, message: str | None = None) -> None:
        (self.running if seq.status == "running" else self.waiting).remove(seq)
        seq.finish(finish_type, matched, message)
        seq.weight_version = self.weight_version
        needs_tail = finish_type != "abort" and self.cache is not None and seq.num_kv < seq.num_tokens
        if needs_tail and seq.kv_generation == self.generation:
            self.finishing.append(seq)  # answered after the next step (_retire)
        else:
            self._retire(seq)

    def _retire(self, seq: Sequence) -> None:
        """A finished sequence leaves for good: cache its KV, release it, answer the caller."""
        self._cache_and_release(seq)
        if seq.on_finish is not None:
            seq.on_finish(seq)

    def _retire_finishing(self) -> None:
        """Answer finished sequences now, without computing their newest token's KV."""
        finishing, self.finishing = self.finishing, []
        for seq in finishing:
            self._retire(seq)

    def _cache_and_release(self, seq: Sequence) -> None:
        slots = seq.drop_slots()
        if self.cache is not None and len(slots) and seq.kv_generation == self.generation:
            self.cache.insert(seq.all_ids[:len(slots)], slots)
        self.pool.release(slots)

    # ------------------------------------------------------------------ control (pause, abort, flush, weights)

    def retract(self, seq: Sequence) -> None:
        """Move a running sequence back to the front of the queue; its output so far is kept."""
        self.running.remove(seq)
        self._cache_and_release(seq)
        seq.status = "waiting"
        seq.num_retractions += 1
        self.waiting.appendleft(seq)

    def abort(self, seq: Sequence, message: str | None = None) -> None:
        """Answer `seq` with finish_reason abort; without a message SGLang's "Aborted"."""
        if not seq.is_finished:
            self._finish(seq, "abort", message=message)

    def abort_all(self, message: str | None = None) -> int:
        victims = list(self.waiting) + list(self.running)
        for seq in victims:
            self.abort(seq, message)
        self._retire_finishing()  # already finished: answered as they are
        return len(victims)

    def pause(self, mode: str) -> None:
        """SGLang's pause modes: abort (answer every request with finish_reason abort), retract (running
        requests go back to the queue and resume after continue), in_place (freeze everything as is)."""
        if mode == "abort":
            self.abort_all()
        elif mode == "retract":
            for seq in reversed(list(self.running)):
                self.retract(seq)
        self._retire_finishing()  # finished requests are answered now, not after the pause
        self.paused = True

    def resume(self) -> None:
        """continue_generation: waiting requests (retracted ones first) are scheduled again."""
        self.paused = False

    def flush_cache(self) -> bool:
        """Drop the prefix cache. Refused while requests are running or, unless paused, waiting (SGLang's
        scheduler.py `flush_cache`: only when `is_fully_idle(ignore_waiting=paused)`), so pause(retract) then
        flush works: retracted requests wait and hold no KV."""
        if self.running or (self.waiting and not self.paused):
            return False
        self._retire_finishing()
        if self.cache is not None:
            self.cache.reset()
        return True

    def weights_changed(self, version: str | None) -> None:
        """New weights are loaded: no KV computed before may be reused (running requests continue on it)."""
        self.generation += 1
        if version is not None and str(version) != self.weight_version:
            # the live requests' output so far was written by the old version (SGLang's scheduler.py
            # `record_weight_version_change`)
            for seq in list(self.waiting) + self.running:
                if seq.output_ids:
                    seq.weight_version_events.append((self.weight_version, len(seq.output_ids)))
            self.weight_version = str(version)
        self._retire_finishing()
        if self.cache is not None:
            self.cache.reset()

    def check_invariants(self) -> None:
        self.pool.check_invariants()
        if self.cache is not None:
            self.cache.check_invariants()
        for seq in list(self.waiting) + self.running:
            seq.check_invariants()
        # every reference is held by a running/finishing sequence or a cache node, and by nobody else
        holders = [seq.kv_slots for seq in self.running + self.finishing]
        holders += self.cache.node_slots() if self.cache is not None else []
        expected = torch.zeros_like(self.pool.refs)
        for slots in holders:
            expected.index_add_(0, slots, torch.ones(len(slots), dtype=expected.dtype))
        assert torch.equal(expected[1:], self.pool.refs[1:]), "slot reference counts do not match their holders"
