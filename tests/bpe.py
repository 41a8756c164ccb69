"""A byte-level BPE tokenizer trained here on trace text (no hub), for the tests that run the pipeline on a
tokenizer whose tokens do not follow trace lines: its pre-tokenizer does not split the text at all, so merges cross
spaces and line ends ("]\\nCurrent" can be one token), as they do in the BPE vocabularies of Qwen and Llama-3.
Special tokens take ids 0-3 (pad, bos, eos, unk), as the domain tokenizer's do."""

from pathlib import Path


def train_bpe(texts: list[str], directory: Path, vocab_size: int = 800) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from apr_ds.data.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(directory))
    return Path(directory)


def train_sentencepiece_like(texts: list[str], directory: Path, vocab_size: int = 800) -> Path:
    """A BPE with SentencePiece's word boundaries, as Llama-2's tokenizer has them: spaces become "▁" and every
    encode call starts with one (which decoding strips), so encoding a text in two pieces is not encoding it whole."""
    from tokenizers import Tokenizer, decoders, models, normalizers, trainers
    from transformers import PreTrainedTokenizerFast

    from apr_ds.data.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, UNK

    tokenizer = Tokenizer(models.BPE(unk_token=UNK))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, show_progress=False,
                                  initial_alphabet=sorted(set("".join(texts)) | {"▁"}))
    tokenizer.train_from_iterator(texts, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=BOS, eos_token=EOS, pad_token=PAD,
                                   unk_token=UNK, clean_up_tokenization_spaces=False)
    fast.save_pretrained(str(directory))
    return Path(directory)
