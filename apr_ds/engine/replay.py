"""Replay mode: the server answers with recorded sequences instead of a model's predictions.

For testing the spawn/join runtime through the real server path (HTTP, scheduler, prefix cache)
with outputs known in advance: `apr-ds serve --model DIR engine.replay_file=sequences.jsonl`, where
the file holds `{"text": ...}` lines (e.g. `apr-ds data`'s sequences/apr/train.jsonl). Each text
becomes `<s>` + text + `</s>`; at every step the next token is the one that follows the request's
whole context in the recorded texts (the first recorded one where they branch), or EOS where no
recorded text continues it. It is greedy and deterministic, and the log-prob it reports is 0.

This is a test instrument, not a model: the model directory is still loaded (config, tokenizer,
weights), the KV cache still fills, but no forward pass decides the tokens. With
`engine.replay_compute=true` the model's forward pass still runs at every step (its tokens are then
replaced), so timings are those of a model of that size writing exactly the recorded traces: this is how
tools/bench_runtime.py measures latency at known accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path

from apr_ds.engine.sequence import Sequence
from apr_ds.errors import UserError


class ReplayRunner:
    def __init__(self, replay_file: str | Path, tokenizer, compute=None):
        """`compute`: a ModelRunner to run (and overrule) at every step, or None to skip the model."""
        self.eos, self.compute = tokenizer.eos_token_id, compute
        self.trie: dict = {}
        path = Path(replay_file)
        if not path.is_file():
            raise UserError(f"engine.replay_file {str(path)!r} does not exist")
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                text = json.loads(line)["text"]
            except (json.JSONDecodeError, KeyError, TypeError):
                raise UserError(f"{path}:{number}: expected a JSON object with a \"text\" field") from None
            ids = [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [self.eos]
            node = self.trie
            for token in ids:
                node = node.setdefault(token, {})  # dicts keep insertion order: the first recorded branch wins

    def next_token(self, context: list[int]) -> int:
        node = self.trie
        for token in context:
            node = node.get(token)
            if node is None:
                return self.eos
        return next(iter(node), self.eos)

    def run(self, seqs: list[Sequence], num_new: list[int], sample: list[bool]) -> tuple[list[int], list[float]]:
        if self.compute is not None:
            self.compute.run(seqs, num_new, sample)
        tokens = [self.next_token(seq.prompt_ids + seq.output_ids) for seq, s in zip(seqs, sample) if s]
        return tokens, [0.0] * len(tokens)
