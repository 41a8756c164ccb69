"""The trajectory tree of one program: every thread's generation calls, in the form RL and eval read.

A thread is one context: the root (main thread) or a child started by a spawn. Each of its
generation calls is a `Segment`: the prompt ids it was given (masked for training: part of it is text
the runtime inserted, such as join blocks) and the ids the model sampled, with their behaviour log-probs.

Token accounting (stated once, used everywhere):
- a segment's *new tokens* are the tokens of its context that the previous segment of the same
  thread had not already seen: |prompt| + |output| - lcp(prompt, previous prompt + previous output);
- **total tokens** of a program = the sum of new tokens over every segment of every thread, so a
  parent's prefix shared between its calls is counted once, and the join text is counted;
- **sequential tokens** of a thread = its new tokens + for each of its spawns the largest sequential
  count among that spawn's children (children run concurrently): parent pre-spawn + longest child +
  continuation, recursively. For a program without spawns it equals total tokens;
- **acceleration** = total tokens / sequential tokens of the root (1 without spawns): the token-latency speedup
  that running the children concurrently buys over running every thread one after another (ThreadWeaver);
- **longest thread** = the longest single context (|prompt| + |output|) of any segment: the context
  window the program needed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from apr_ds.data.sequences import common_prefix_len

TRAJECTORIES_SUFFIX = ".trajectories.jsonl"
"""`apr-ds eval` writes every program of `{method}{tag}.json`'s run, one `Trajectory.to_json()` per line, to
`{method}{tag}` + this suffix."""


@dataclass
class Segment:
    prompt_ids: list[int]
    output_ids: list[int]
    logprobs: list[float]
    """Behaviour log-probs of output_ids, as the server returned them."""
    finish_reason: str
    """stop, length or abort (the server's), or `spawn_stop` when the runtime cut a self-invented join."""
    weight_version: str
    cached_tokens: int
    start: float
    end: float

    @property
    def context_len(self) -> int:
        return len(self.prompt_ids) + len(self.output_ids)


@dataclass
class Thread:
    thread_id: int
    parent_id: int | None
    depth: int
    """0 for the main thread; a child of depth d was spawned by a thread of depth d-1."""
    prompt: str
    """The thread's first prompt text (without `<s>`)."""
    segments: list[Segment] = field(default_factory=list)
    spawns: list[list[int]] = field(default_factory=list)
    """Child thread ids of each spawn, in spawn order."""
    text: str = ""
    """The thread's whole final context text (its last prompt plus its last output), without `<s>`."""
    status: str = "running"
    """done, failed (bad spawn, limits), truncated (context full), aborted or timeout."""
    error: str = ""

    def new_tokens(self) -> list[int]:
        out, previous = [], []
        for seg in self.segments:
            shared = common_prefix_len(seg.prompt_ids, previous)
            out.append(seg.context_len - shared)
            previous = seg.prompt_ids + seg.output_ids
        return out


@dataclass
class Trajectory:
    problem: dict
    method: str
    threads: list[Thread]
    """threads[0] is the main thread; parents come before their children."""
    correct: bool = False
    reason: str = ""
    start: float = 0.0
    end: float = 0.0

    @property
    def root(self) -> Thread:
        return self.threads[0]

    @property
    def latency_s(self) -> float:
        return self.end - self.start

    def total_tokens(self) -> int:
        return sum(sum(t.new_tokens()) for t in self.threads)

    def sequential_tokens(self, thread_id: int = 0) -> int:
        thread = self.threads[thread_id]
        return sum(thread.new_tokens()) + sum(max((self.sequential_tokens(c) for c in spawn), default=0)
                                              for spawn in thread.spawns)

    def acceleration(self) -> float:
        sequential = self.sequential_tokens()
        return self.total_tokens() / sequential if sequential else 1.0

    def longest_thread(self) -> int:
        return max((seg.context_len for t in self.threads for seg in t.segments), default=0)

    @property
    def num_spawns(self) -> int:
        return sum(len(t.spawns) for t in self.threads)

    def children_per_spawn(self) -> list[int]:
        return [len(spawn) for t in self.threads for spawn in t.spawns]

    def to_json(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_json(obj: dict) -> "Trajectory":
        threads = [Thread(**{**t, "segments": [Segment(**s) for s in t["segments"]]}) for t in obj["threads"]]
        return Trajectory(**{**obj, "threads": threads})
