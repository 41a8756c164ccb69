"""The spawn/join runtime: execute one program of a model on an SGLang-protocol server.

For APR (apr-reference §5): generate the main thread until EOS or a spawn block; parse the spawn with the
task (`Task.parse_spawn`); run all children concurrently (asyncio), each from its own short prompt; replace
the spawn block with the children's results (the join) and resume the parent, whose earlier context the
server's prefix cache still holds; repeat until the parent ends. If the parent starts writing join
results itself (`<Sub Searches>`), the runtime cuts there and turns it into a spawn, as the reference does.
For SoS+ and best-of-n the same code runs one thread that never spawns. What the spawn and join lines say
is the task's; the runtime knows only the markers around them (`apr_ds.lang`).

Nothing here raises on model output: a malformed spawn, too many children or spawns, a spawn deeper
than `rollout.max_depth`, or a full context marks that thread failed or truncated; the program goes on
(a failed child reports no result) or ends, and scores 0 unless its main thread ends with a verified path.

    runner = ProgramRunner(client, tokenizer, task, cfg.rollout)
    trajectory = await runner.run(problem, "apr")
"""

from __future__ import annotations

import asyncio
import os
import time

from apr_ds.lang import CALL_CLOSE, CALL_OPEN, JOIN_OPEN, SpawnError, ends_with_spawn
from apr_ds.rollout.client import ServerError
from apr_ds.rollout.trajectory import Segment, Thread, Trajectory


MAX_RESUMES = 64
"""Generation calls a thread may resume after the server aborted them (one per weight update it lived through)."""


class ProgramRunner:
    def __init__(self, client, tokenizer, task, cfg, admit: asyncio.Event | None = None):
        """`cfg` is a RolloutConfig; `task` a Task (prompts, spawns and joins, the verifier). `admit`, when given, must be set for
        a request to be sent: a rollout rank clears it while it updates its server's weights."""
        self.client, self.tokenizer, self.task, self.cfg = client, tokenizer, task, cfg
        self.admit = admit
        self.bos, self.eos = tokenizer.bos_token_id, tokenizer.eos_token_id

    def encode(self, text: str) -> list[int]:
        return [self.bos] + self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def decode(self, ids: list[int]) -> str:
        if ids and ids[-1] == self.eos:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)

    async def run(self, problem, method: str, sub_call_budget: int | None = None, token_budget: int | None = None,
                  temperature: float | None = None) -> Trajectory:
        prompt = self.task.prompt(problem, method, sub_call_budget=sub_call_budget, token_budget=token_budget)
        trajectory = Trajectory(problem.to_json(), method, [], start=time.time())
        sampling = {"temperature": self.cfg.temperature if temperature is None else temperature,
                    "top_p": self.cfg.top_p, "top_k": self.cfg.top_k, "no_stop_trim": True}
        if method == "apr":
            sampling["stop"] = [CALL_CLOSE, JOIN_OPEN]
        try:
            await asyncio.wait_for(self._thread(trajectory, None, 0, prompt, token_budget, sampling, method == "apr"),
                                   self.cfg.timeout_s)
        except asyncio.TimeoutError:
            for thread in trajectory.threads:
                if thread.status == "running":
                    thread.status, thread.error = "timeout", f"program exceeded rollout.timeout_s={self.cfg.timeout_s}"
        trajectory.end = time.time()
        root = trajectory.root
        if root.status == "done":
            verdict = self.task.verify(problem, root.text)
            trajectory.correct, trajectory.reason = verdict.ok, verdict.reason
        else:
            trajectory.reason = f"main thread {root.status}" + (f": {root.error}" if root.error else "")
        return trajectory

    async def _thread(self, trajectory: Trajectory, parent_id, depth: int, prompt: str, token_budget,
                      sampling: dict, may_spawn: bool) -> Thread:
        thread = Thread(len(trajectory.threads), parent_id, depth, prompt)
        trajectory.threads.append(thread)  # before any await, so ids follow spawn order
        text, context = prompt, self.encode(prompt)
        max_segments = 2 * self.cfg.max_spawns + 2
        while thread.status == "running":
            if sum(s.finish_reason != "abort" for s in thread.segments) >= max_segments:
                thread.status, thread.error = "failed", f"more than {max_segments} generation calls"
                break
            segment = await self._generate(thread, context, sampling)
            if segment is None:
                break
            out_text = self.decode(segment.output_ids)
            stop_at = _past_stop(out_text, sampling.get("stop", ())) if segment.finish_reason == "stop" else None
            if stop_at is not None and out_text[:stop_at].endswith(JOIN_OPEN):
                # The model began writing join results itself: keep what precedes them and call the spawn instead.
                self._cut(segment, stop_at - len(JOIN_OPEN), "spawn_stop")
                context = self._continue(context + segment.output_ids, text + self.decode(segment.output_ids),
                                         text + out_text[:stop_at - len(JOIN_OPEN)] + CALL_OPEN)
                text = text + out_text[:stop_at - len(JOIN_OPEN)] + CALL_OPEN
                continue
            if stop_at is not None and out_text[stop_at:].strip("\n"):
                # A token ran past the stop string (BPE merges can span it): the text after it was never meant
                # to be written. Keep the whole tokens before the stop string and write its remainder as text.
                self._cut(segment, stop_at, "stop")
                context = self._continue(context + segment.output_ids, text + self.decode(segment.output_ids),
                                         text + out_text[:stop_at])
                text += out_text[:stop_at]
            else:
                text += out_text
                context = context + segment.output_ids
            if segment.finish_reason == "abort" and len(thread.segments) < max_segments + MAX_RESUMES:
                continue  # paused for a weight update (pause mode abort): go on from here with the new weights
            if segment.finish_reason == "length":
                thread.status, thread.error = "truncated", f"context reached rollout.max_context={self.cfg.max_context}"
            elif segment.finish_reason != "stop":
                thread.status, thread.error = "aborted", "the server aborted the request"
            elif not ends_with_spawn(text):
                thread.status = "done"
            elif not may_spawn:
                thread.status, thread.error = "failed", "spawned, but this method does not run spawns"
            else:
                joined = await self._spawn(trajectory, thread, text, token_budget, sampling)
                context, text = self._continue(context, text, joined), joined
        thread.text = text
        return thread

    async def _generate(self, thread: Thread, context: list[int], sampling: dict) -> Segment | None:
        max_new = self.cfg.max_context - len(context)
        if max_new <= 0:
            thread.status, thread.error = "truncated", f"prompt of {len(context)} tokens fills rollout.max_context"
            return None
        if self.admit is not None:
            await self.admit.wait()
        start = time.time()
        try:
            gen = await self.client.generate_tokens(context, {**sampling, "max_new_tokens": max_new})
        except ServerError as e:
            if e.status is None:
                raise  # the server is gone: not this program's fault, let the caller decide
            if e.is_length_refusal:  # SGLang's input limit is a few tokens below its sequence limit
                thread.status, thread.error = "truncated", f"the server refused {len(context)} tokens as too long: {e.message}"
            else:
                thread.status, thread.error = "failed", f"server refused the request: {e}"
            return None
        segment = Segment(list(context), gen.output_ids, gen.logprobs, gen.finish_reason, gen.weight_version,
                          gen.cached_tokens, start, time.time())
        thread.segments.append(segment)
        return segment

    async def _spawn(self, trajectory: Trajectory, thread: Thread, text: str, token_budget, sampling: dict) -> str:
        """Run the children of the spawn that ends `text`; return the parent's joined text (or mark it failed)."""
        spawn = self.task.parse_spawn(text, check_numbers=self.cfg.check_spawned_numbers)
        problem = None
        if isinstance(spawn, SpawnError):
            problem = f"malformed spawn ({spawn.kind}): {spawn.message}"
        elif thread.depth + 1 > self.cfg.max_depth:
            problem = f"spawn at depth {thread.depth + 1} exceeds rollout.max_depth={self.cfg.max_depth}"
        elif len(spawn.children) > self.cfg.max_children:
            problem = f"spawn of {len(spawn.children)} children exceeds rollout.max_children={self.cfg.max_children}"
        elif len(thread.spawns) >= self.cfg.max_spawns:
            problem = f"more than rollout.max_spawns={self.cfg.max_spawns} spawns"
        if problem:
            thread.status, thread.error = "failed", problem
            return text
        runs = [self._thread(trajectory, thread.thread_id, thread.depth + 1, self.task.child_prompt(child, token_budget),
                             token_budget, sampling, True) for child in spawn.children]
        if self.cfg.sequential_children:
            children = [await run for run in runs]
        else:
            children = await asyncio.gather(*runs)
        thread.spawns.append([child.thread_id for child in children])
        results = [self.task.child_result(child.text) if child.status == "done" else None for child in children]
        return self.task.join_text(spawn, results)

    def _tokens_before(self, ids: list[int], chars: int) -> int:
        """The largest k such that ids[:k] decodes to at most `chars` characters."""
        k = len(ids)
        while k > 0 and len(self.decode(ids[:k])) > chars:
            k -= 1
        return k

    def _cut(self, segment: Segment, chars: int, finish_reason: str) -> None:
        """Keep the sampled tokens that lie wholly within the output's first `chars` characters."""
        keep = self._tokens_before(segment.output_ids, chars)
        segment.output_ids, segment.logprobs = segment.output_ids[:keep], segment.logprobs[:keep]
        segment.finish_reason = finish_reason

    def _continue(self, context: list[int], old_text: str, text: str) -> list[int]:
        """The ids of `text`, which the runtime made by rewriting the end of `old_text`, a thread whose ids were
        `context` (a join replacing a spawn block, or a cut): the context's own tokens that lie wholly within the
        part the two texts share, then the rest of `text` encoded. The tokens the model sampled stay as it sampled
        them, so the server's prefix cache still holds the parent's context and the learner scores what was
        sampled. Encoding all of `text` afresh would re-split them wherever the model did not sample the
        tokenizer's own split, and with a BPE whose merges cross line ends it re-splits the parent's earlier
        tokens, whose context then misses the cache. Where the two parts do not decode back to `text` (a
        SentencePiece tokenizer starts every encode with a word boundary), `text` is encoded whole."""
        shared = len(os.path.commonprefix([old_text, text]))
        body = context[1:]  # after <s>
        low, high = 0, len(body)  # the tokens body[:low] spell a start of the shared part; find the most that do
        while low < high:
            middle = (low + high + 1) // 2
            if text[:shared].startswith(self.decode(body[:middle])):
                low = middle
            else:
                high = middle - 1
        kept = self.decode(body[:low])
        ids = context[:1 + low] + self.tokenizer(text[len(kept):], add_special_tokens=False)["input_ids"]
        return ids if self.decode(ids[1:]) == text else self.encode(text)


def _past_stop(text: str, stops) -> int | None:
    """Where the first stop string in `text` ends, or None if there is none."""
    ends = [text.find(stop) + len(stop) for stop in stops if stop in text]
    return min(ends) if ends else None
