"""Which generated tokens RL's line penalty (rl.line_penalty) pushes down: the wrong parts of checked lines.

Countdown's outcome reward credits a solved program's every token, including the arithmetic slips of the
branches it explored and abandoned, and on the cpu task that credit drifted the per-line arithmetic down
(docs/results.md, configuration 19). Every `Exploring Operation` and `Generated Node` line can be checked on
its own against the state it was written under (eval/lines.py), so a wrong line is a verifiable mistake
whatever the program's outcome. The learner gives the tokens of a line's wrong part (a wrong result, a repeated
or impossible operation, a wrong list or target; not the rest of the line, which can be right given its prefix;
all of a line that does not parse, which would otherwise escape every check) the advantage
A_program - rl.line_penalty (loss.py takes per-token advantages).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from apr_ds.errors import UserError
from apr_ds.eval.lines import wrong_spans

_SAMPLE = "Current State: 24:[3, 8, 1], Operations: []\nExploring Operation: 3+8=11, Resulting Numbers: [1, 11]\n"


class WrongTokens:
    """Marks, per generated token of a sequence, whether it lies in a wrong part of a checked line (1.0) or not (0.0)."""

    def __init__(self, tokenizer):
        self.piece = lru_cache(maxsize=None)(lambda i: tokenizer.decode([i], skip_special_tokens=True))
        # Offsets come from decoding token by token, which only matches the text if tokens decode independently
        # (the domain tokenizer's do; a SentencePiece tokenizer's leading spaces do not)
        if "".join(self.piece(i) for i in tokenizer.encode(_SAMPLE)) != _SAMPLE:
            raise UserError("rl.line_penalty needs a tokenizer whose tokens decode one by one to the text (apr-ds's "
                            "domain tokenizer); this model's does not: set rl.line_penalty=0")

    def __call__(self, ids, prompt_len: int) -> np.ndarray:
        pieces = [self.piece(int(i)) for i in ids]
        ends = np.cumsum([len(p) for p in pieces])
        marks = np.zeros(len(ids) - prompt_len, np.float32)
        for start, end in wrong_spans("".join(pieces)):
            first = max(int(np.searchsorted(ends, start, side="right")), prompt_len)  # the token holding `start`
            last = int(np.searchsorted(ends, end, side="left"))  # the token holding `end - 1`
            if last >= first:  # else the wrong line lies in the prompt: an earlier call's to answer for
                marks[first - prompt_len:last + 1 - prompt_len] = 1.0
        return marks
