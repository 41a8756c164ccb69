"""Which generated tokens RL's line penalty (rl.line_penalty) pushes down: the wrong parts of checked lines.

The outcome reward credits a solved program's every token, including the slips of the branches it explored
and abandoned, and that credit can drift the per-line skills down. A task whose lines can each be checked on
their own (`Task.wrong_spans`: a line against the state it was written under) makes a wrong line a verifiable
mistake whatever the program's outcome. The learner gives the tokens of a line's wrong part the advantage
A_program - rl.line_penalty (loss.py takes per-token advantages). The marks are made here, on the rollout
side, where the text is: the task says which characters are wrong, this module maps them onto tokens.

    marks = LineMarks(tokenizer, task)
    marks(ids, prompt_len)   # one float32 per generated token: 1.0 in a wrong part, else 0.0
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from apr_ds.errors import UserError


class LineMarks:
    """Marks, per generated token of a sequence, whether it lies in a wrong part of a checked line (1.0) or not (0.0)."""

    def __init__(self, tokenizer, task):
        self.task = task
        self.piece = lru_cache(maxsize=None)(lambda i: tokenizer.decode([i], skip_special_tokens=True))
        # Offsets come from decoding token by token, which only matches the text if tokens decode independently
        # (the domain tokenizer's do; a SentencePiece tokenizer's leading spaces do not)
        sample = task.sample_trace
        if "".join(self.piece(i) for i in tokenizer.encode(sample)) != sample:
            raise UserError("rl.line_penalty needs a tokenizer whose tokens decode one by one to the text (apr-ds's "
                            "domain tokenizer); this model's does not: set rl.line_penalty=0")

    def __call__(self, ids, prompt_len: int) -> np.ndarray:
        pieces = [self.piece(int(i)) for i in ids]
        ends = np.cumsum([len(p) for p in pieces])
        marks = np.zeros(len(ids) - prompt_len, np.float32)
        for start, end in self.task.wrong_spans("".join(pieces)):
            first = max(int(np.searchsorted(ends, start, side="right")), prompt_len)  # the token holding `start`
            last = int(np.searchsorted(ends, end, side="left"))  # the token holding `end - 1`
            if last >= first:  # else the wrong line lies in the prompt: an earlier call's to answer for
                marks[first - prompt_len:last + 1 - prompt_len] = 1.0
        return marks
