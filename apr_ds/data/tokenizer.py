"""The domain tokenizer: the task's trace phrases, numbers 0..999 and single characters as tokens.

Built with the `tokenizers` library and saved as a Hugging Face tokenizer directory
(`tokenizer.json` + `tokenizer_config.json` + `special_tokens_map.json`), so transformers'
`AutoTokenizer` and SGLang's `--tokenizer-path` load it as-is.

Why a domain tokenizer: Llama-2's tokenizer spells every digit separately and needs a hub download;
whole-number tokens shorten traces ~2x, which is what makes CPU training feasible (cpu-scale-probe §1).
The vocabulary is a fixed, ordered list (never built from a set: set order changes between processes).

Ids: 0 `<pad>`, 1 `<s>`, 2 `</s>`, 3 `<unk>` (Llama-2's pad/bos/eos ids). Nothing is added to the text
on encode: prompts carry `<s>` explicitly (as ids, or as the literal text `<s>`), which avoids the
reference's double-BOS pitfall. A newline is always its own token and phrases never contain one, so a
prompt's tokens are a prefix of the tokens of any text that continues it on a new line.

To train with Llama-2's tokenizer instead, set `data.tokenizer=/path/to/llama-2-tokenizer` (a local
directory with its `tokenizer.json`; nothing is downloaded at run time); digits are then one per token.
"""

from __future__ import annotations

import hashlib
import string
from pathlib import Path
from typing import Sequence

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = [PAD, BOS, EOS, UNK]
MAX_WHOLE_NUMBER = 999

CHARACTERS = [c for c in string.printable if c not in "\x0b\x0c\r"]


def _phrases(task_phrases: Sequence[str] | None) -> list[str]:
    """The task's trace phrases (`Task.trace_phrases`; None: the default task's, for callers without a config),
    then the block markers and budget prefixes every task shares, each once, first place kept."""
    if task_phrases is None:
        from apr_ds.config import TaskConfig
        from apr_ds.tasks import TASKS
        task_phrases = TASKS[TaskConfig().name].trace_phrases
    from apr_ds.lang import BLOCK_PHRASES
    return list(dict.fromkeys([*task_phrases, *BLOCK_PHRASES]))


def vocabulary(task_phrases: Sequence[str] | None = None) -> list[str]:
    numbers = [str(n) for n in range(MAX_WHOLE_NUMBER + 1)]
    return list(dict.fromkeys(SPECIAL_TOKENS + _phrases(task_phrases) + numbers + CHARACTERS))


def _split_pattern(phrases: list[str]) -> str:
    import re
    phrases = sorted(phrases, key=len, reverse=True)  # sorted() is stable and the list is fixed: deterministic
    # A number of up to 3 digits that is not part of a longer number is one token; longer numbers go digit by digit.
    return "|".join([re.escape(p) for p in phrases] + [r"(?<!\d)\d{1,3}(?!\d)", r"."])


def build_tokenizer(task_phrases: Sequence[str] | None = None):
    """A `transformers.PreTrainedTokenizerFast` over the domain vocabulary of a task's trace phrases."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: i for i, token in enumerate(vocabulary(task_phrases))}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(_split_pattern(_phrases(task_phrases))), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens(SPECIAL_TOKENS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK,
                                   clean_up_tokenization_spaces=False)


def save_tokenizer(directory: str | Path, task_phrases: Sequence[str] | None = None):
    tokenizer = build_tokenizer(task_phrases)
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def install_tokenizer(directory: str | Path, source: str = "", task_phrases: Sequence[str] | None = None):
    """Write the run's tokenizer directory: the domain tokenizer of the task's phrases, or a copy of a local one
    (`data.tokenizer`)."""
    if not source:
        return save_tokenizer(directory, task_phrases)
    from apr_ds.errors import UserError
    tokenizer = load_tokenizer(source)
    if tokenizer.bos_token_id is None or tokenizer.eos_token_id is None:
        raise UserError(f"tokenizer {source!r} has no bos or eos token; apr-ds sequences need both")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token  # Llama-2 ships without a pad token
    tokenizer.save_pretrained(str(directory))
    return tokenizer


def load_tokenizer(directory: str | Path):
    from transformers import AutoTokenizer
    from apr_ds.errors import UserError
    path = Path(directory)
    if not (path / "tokenizer.json").is_file():
        raise UserError(f"no tokenizer at {str(path)!r} (expected {path / 'tokenizer.json'}); run `apr-ds data` first")
    return AutoTokenizer.from_pretrained(str(path))


def tokenizer_sha256(directory: str | Path) -> str:
    """Identity of a tokenizer: data files record it, the learner checks it."""
    return hashlib.sha256((Path(directory) / "tokenizer.json").read_bytes()).hexdigest()


def encode(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def decode(tokenizer, ids) -> str:
    return tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
