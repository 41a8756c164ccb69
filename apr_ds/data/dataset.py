"""Token datasets for the learner: load and check `apr-ds data` output, then plan length-bucketed batches.

    data = load_sft_data(run_dir / "data", "sosp")          # raises UserError on missing/corrupt/mismatched files
    plan = BatchPlan(data.train.lengths(context), global_batch=256, micro_batch=8, world_size=4, seed=0)
    for micro in plan.rank_micro_batches(step, rank):       # index arrays, one per accumulation micro-step
        input_ids, labels = collate(data.train, micro, context)

Why length bucketing and not packing: a sequence is one thread of a search, and packing needs a
block-diagonal attention mask to keep sequences apart (and a per-sequence position reset). Sorting a
window of sequences by length and cutting it into batches leaves only a few percent padding on these
traces, keeps plain causal attention, and batches the same whatever the world size.

Determinism: the order is a pure function of (seed, epoch, step); a resumed run sees exactly the
batches the straight run would have seen, and every rank computes the whole plan itself, so no data
order is communicated. Each step gives every rank the same number of micro-batches of `micro_batch`
sequences, and the sequences of one step have similar lengths, so ranks stay in step.
"""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from apr_ds.config import METHODS
from apr_ds.errors import UserError

IGNORE_INDEX = -100  # label value that cross-entropy skips: padding


@dataclass
class TokenSplit:
    """One split of one method: all sequences' token ids concatenated, and where each one starts."""

    ids: np.ndarray      # int32, every sequence is bos + text + eos
    offsets: np.ndarray  # int64, length n + 1; sequence i is ids[offsets[i]:offsets[i + 1]]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self, context: int | None = None) -> np.ndarray:
        """Token count per sequence, after truncation to `context`."""
        lengths = np.diff(self.offsets)
        return lengths if context is None else np.minimum(lengths, context)

    def sequence(self, i: int, context: int | None = None) -> np.ndarray:
        start, end = int(self.offsets[i]), int(self.offsets[i + 1])
        if context is not None:
            end = min(end, start + context)
        return self.ids[start:end]


@dataclass
class SFTData:
    train: TokenSplit
    val: TokenSplit
    manifest: dict
    data_dir: Path

    @property
    def tokenizer_dir(self) -> Path:
        return self.data_dir / "tokenizer"

    @property
    def vocab_size(self) -> int:
        return int(self.manifest["vocab_size"])


# ---------------------------------------------------------------------------- loading and checks


def load_sft_data(data_dir: str | Path, method: str) -> SFTData:
    """Load train and val tokens of `method`, checking every file before any training starts."""
    data_dir = Path(data_dir)
    if method not in METHODS:
        raise UserError(f"sft.method must be one of {', '.join(METHODS)}, got {method!r}")
    manifest = load_manifest(data_dir)
    check_tokenizer(data_dir, manifest)
    splits = {}
    for split in ("train", "val"):
        tokens = load_split(data_dir / "tokens" / method / f"{split}.npz", int(manifest["vocab_size"]))
        expected = manifest.get("methods", {}).get(method, {}).get(split, {}).get("sequences")
        if expected is not None and expected != len(tokens):
            raise UserError(f"{data_dir / 'tokens' / method / f'{split}.npz'} holds {len(tokens)} sequences but "
                            f"manifest.json says {expected}: the data directory is inconsistent; re-run `apr-ds data`")
        splits[split] = tokens
    if len(splits["train"]) == 0:
        raise UserError(f"no {method} training sequences in {data_dir}; check the data config and re-run `apr-ds data`")
    return SFTData(splits["train"], splits["val"], manifest, data_dir)


def load_manifest(data_dir: Path) -> dict:
    path = data_dir / "manifest.json"
    if not path.is_file():
        raise UserError(f"no data at {data_dir} (missing {path}); run `apr-ds data` with the same preset/config first")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is corrupt ({e}); re-run `apr-ds data`") from None
    for key in ("tokenizer_sha256", "vocab_size"):
        if key not in manifest:
            raise UserError(f"{path} has no {key!r}: it was written by an older or unfinished `apr-ds data`; re-run it")
    return manifest


def check_tokenizer(data_dir: Path, manifest: dict) -> None:
    """The token ids mean something only with the tokenizer that made them."""
    from apr_ds.data.tokenizer import tokenizer_sha256

    tokenizer_json = data_dir / "tokenizer" / "tokenizer.json"
    if not tokenizer_json.is_file():
        raise UserError(f"missing tokenizer {tokenizer_json}; re-run `apr-ds data`")
    actual = tokenizer_sha256(data_dir / "tokenizer")
    if actual != manifest["tokenizer_sha256"]:
        raise UserError(f"tokenizer mismatch: {tokenizer_json} has sha256 {actual[:12]}… but the token files were made "
                        f"with {manifest['tokenizer_sha256'][:12]}… (manifest.json); the tokenizer was replaced or "
                        f"rebuilt differently — re-run `apr-ds data` so tokens and tokenizer agree")


def load_split(path: Path, vocab_size: int) -> TokenSplit:
    if not path.is_file():
        raise UserError(f"missing data file {path}; run `apr-ds data` with the same preset/config first")
    try:
        with np.load(path) as npz:
            ids, offsets = npz["ids"], npz["offsets"]
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, EOFError) as e:
        raise UserError(f"corrupt data file {path} ({type(e).__name__}: {e}); re-run `apr-ds data`") from None
    problem = _split_problem(ids, offsets, vocab_size)
    if problem:
        raise UserError(f"corrupt data file {path}: {problem}; re-run `apr-ds data`")
    return TokenSplit(ids.astype(np.int32, copy=False), offsets.astype(np.int64, copy=False))


def _split_problem(ids: np.ndarray, offsets: np.ndarray, vocab_size: int) -> str | None:
    if ids.ndim != 1 or offsets.ndim != 1 or len(offsets) < 1:
        return "ids and offsets must be 1-D arrays"
    if not (np.issubdtype(ids.dtype, np.integer) and np.issubdtype(offsets.dtype, np.integer)):
        return f"ids/offsets must be integers, got {ids.dtype}/{offsets.dtype}"
    if offsets[0] != 0 or offsets[-1] != len(ids) or np.any(np.diff(offsets) < 2):
        return "offsets do not cut ids into sequences of at least bos + eos"
    if len(ids) and (ids.min() < 0 or ids.max() >= vocab_size):
        return f"token ids outside the vocabulary [0, {vocab_size})"
    return None


# ---------------------------------------------------------------------------- batch plan


class BatchPlan:
    """Which sequences each rank trains on at each step: length-bucketed, deterministic per (seed, epoch).

    An epoch is `len(lengths) // global_batch` steps (the remainder, different each epoch, is skipped).
    """

    def __init__(self, lengths: np.ndarray, global_batch: int, micro_batch: int, world_size: int,
                 seed: int, bucket_steps: int = 50):
        if global_batch % (micro_batch * world_size):
            raise UserError(f"world size {world_size} does not divide the batch: sft.global_batch={global_batch} "
                            f"must be a multiple of sft.deepspeed.micro_batch={micro_batch} x world size {world_size}")
        if len(lengths) < global_batch:
            raise UserError(f"only {len(lengths)} training sequences, fewer than one batch "
                            f"(sft.global_batch={global_batch}); make more data or lower the batch")
        self.lengths = np.asarray(lengths, dtype=np.int64)
        self.global_batch, self.micro_batch, self.world_size = global_batch, micro_batch, world_size
        self.accumulation = global_batch // (micro_batch * world_size)
        self.seed, self.bucket_steps = seed, max(1, bucket_steps)
        self.steps_per_epoch = len(lengths) // global_batch
        self._epoch, self._order = -1, None

    def epoch_order(self, epoch: int) -> np.ndarray:
        """[steps_per_epoch, global_batch] sequence indices; each row sorted by length."""
        if epoch != self._epoch:
            rng = np.random.default_rng([self.seed, epoch])
            order = rng.permutation(len(self.lengths))[: self.steps_per_epoch * self.global_batch]
            window = self.bucket_steps * self.global_batch
            for start in range(0, len(order), window):  # sort each window by length; stable keeps ties random
                chunk = order[start:start + window]
                order[start:start + window] = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            steps = order.reshape(self.steps_per_epoch, self.global_batch)
            self._order = steps[rng.permutation(self.steps_per_epoch)]  # long and short steps interleave
            self._epoch = epoch
        return self._order

    def step_indices(self, step: int) -> np.ndarray:
        """All sequences of a global step, sorted by length."""
        epoch, position = divmod(step, self.steps_per_epoch)
        return self.epoch_order(epoch)[position]

    def rank_micro_batches(self, step: int, rank: int) -> list[np.ndarray]:
        """This rank's `accumulation` micro-batches for `step`. Micro-batch k of every rank holds neighbours
        in length order, so ranks do similar work at each micro-step (ZeRO-3 syncs them on every layer)."""
        micro = self.step_indices(step).reshape(self.accumulation * self.world_size, self.micro_batch)
        return [micro[k * self.world_size + rank] for k in range(self.accumulation)]

    def step_stats(self, step: int) -> dict:
        """Counts over the whole global step, the same on every rank: loss targets, real and padded tokens."""
        micro = self.lengths[self.step_indices(step)].reshape(-1, self.micro_batch)
        real = int(micro.sum())
        padded = int(micro.max(axis=1).sum() * self.micro_batch)
        return {"targets": real - len(micro) * self.micro_batch, "tokens": real, "padded_tokens": padded}


def collate(split: TokenSplit, indices, context: int | None, pad_id: int = 0):
    """Right-padded input ids and next-token labels (padding labelled IGNORE_INDEX) as torch tensors.

    Right padding with causal attention means real tokens never attend to padding, so no attention
    mask is needed and SDPA can use its plain causal kernel.
    """
    import torch

    seqs = [split.sequence(int(i), context) for i in indices]
    width = max(len(s) for s in seqs)
    input_ids = np.full((len(seqs), width), pad_id, dtype=np.int64)
    labels = np.full((len(seqs), width), IGNORE_INDEX, dtype=np.int64)
    for row, seq in enumerate(seqs):
        input_ids[row, :len(seq)] = seq
        labels[row, :len(seq) - 1] = seq[1:]  # loss on every real next token, prompt included (the paper's choice)
    return torch.from_numpy(input_ids), torch.from_numpy(labels)


def eval_batches(split: TokenSplit, max_sequences: int, micro_batch: int, context: int | None) -> list[np.ndarray]:
    """The validation subset (the first `max_sequences`, 0 = all) cut into length-sorted batches."""
    n = len(split) if max_sequences <= 0 else min(len(split), max_sequences)
    order = np.argsort(split.lengths(context)[:n], kind="stable")
    return [order[i:i + micro_batch] for i in range(0, n, micro_batch)]
