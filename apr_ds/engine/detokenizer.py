"""Token ids -> text: the returned `text`, per-token texts for log-probs, and stop-string matching.

Stop strings are matched on detokenized text, so a stop string that spans several tokens is found.
After each new token only the tail of the output is decoded: a stop string of L characters ends
inside the newest token and spans at most L tokens when every token decodes to at least one
character, plus a margin for tokens that decode to nothing (skipped special tokens).
"""

from __future__ import annotations

from apr_ds.engine.sequence import Sequence

TAIL_MARGIN_TOKENS = 8


class Detokenizer:
    def __init__(self, tokenizer=None):
        self.tokenizer = tokenizer

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        if self.tokenizer is None:
            return ""
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def matched_stop_string(self, seq: Sequence) -> str | None:
        """The stop string the newest token completed, if any."""
        stops = seq.params.stop
        if not stops or self.tokenizer is None:
            return None
        window = max(len(s) for s in stops) + TAIL_MARGIN_TOKENS
        tail = self.decode(seq.output_ids[-window:], seq.params.skip_special_tokens)
        # An earlier occurrence would have stopped the sequence earlier, so any match here is new.
        hits = [(tail.find(s), s) for s in stops if s in tail]
        return min(hits)[1] if hits else None

    def output_text(self, seq: Sequence) -> str:
        """SGLang's `text` (managers/detokenizer_manager.py `trim_matched_stop`): a matched stop token is left out
        unless `no_stop_trim`; a matched stop string cuts the text at its first occurrence, after it with
        `no_stop_trim` and before it without."""
        params, ids = seq.params, seq.output_ids
        matched = seq.finish_matched if seq.finish_type == "stop" else None
        if isinstance(matched, int) and not params.no_stop_trim and ids:
            ids = ids[:-1]  # the last token is the matched one
        text = self.decode(ids, params.skip_special_tokens)
        if isinstance(matched, str) and (pos := text.find(matched)) >= 0:
            text = text[:pos + len(matched)] if params.no_stop_trim else text[:pos]
        return text

    def token_texts(self, ids: list[int]) -> list[str]:
        return [self.decode([i], skip_special_tokens=False) for i in ids]
