"""Running sequences' KV laid out contiguously, one row per sequence, so decode attention reads it in place.

The KV pool stores tokens by slot, scattered. Attention needs each sequence's context as one run, and
gathering every running context out of the pool at every decode step costs more than the rest of the
step once contexts reach a few hundred tokens. The slab keeps that gathered copy between steps:

- a sequence joining the decode batch has its context copied in once, from the pool;
- each decode step appends one token per row (the attention layer writes it, next to the pool write);
- a sequence that leaves frees its row, and the last row moves into the hole, so rows stay packed
  and the batch's KV is the view `k[layer, :num_rows, :max_len]`.

The pool stays the source of truth (the prefix cache reads it). A row is refreshed from the pool when
its sequence's KV was dropped and recomputed since (retraction), which `Sequence.kv_epoch` tells.
"""

from __future__ import annotations

import torch

from apr_ds.engine.kv_pool import KVPool
from apr_ds.engine.sequence import Sequence


class DecodeSlab:
    def __init__(self, pool: KVPool):
        self.pool = pool
        self.k: torch.Tensor | None = None  # [layers, row capacity, length capacity, kv heads, head dim]
        self.v: torch.Tensor | None = None
        self.rows: list[Sequence] = []
        self.lengths: list[int] = []  # context tokens held in each row
        self.epochs: list[int] = []   # kv_epoch of the row's sequence when it was copied in

    def arrange(self, seqs: list[Sequence]) -> list[Sequence]:
        """Hold exactly `seqs`, each with its context up to (not including) its newest token.
        Returns them in row order, the order the decode batch must use."""
        assert seqs, "arrange an empty decode batch"
        wanted = set(seqs)
        row = 0
        while row < len(self.rows):
            seq = self.rows[row]
            if seq not in wanted or self.epochs[row] != seq.kv_epoch or self.lengths[row] != seq.num_kv - 1:
                self._drop(row)
            else:
                row += 1
        present = set(self.rows)
        newcomers = [seq for seq in seqs if seq not in present]
        self._reserve(len(self.rows) + len(newcomers), max(seq.num_kv for seq in seqs))
        for seq in newcomers:
            self._add(seq)
        return list(self.rows)

    def advance(self) -> None:
        """One token was appended to every row by the forward pass."""
        self.lengths = [n + 1 for n in self.lengths]

    def _add(self, seq: Sequence) -> None:
        row, context = len(self.rows), seq.num_kv - 1
        slots = seq.kv_slots[:context]
        self.k[:, row, :context] = self.pool.k.index_select(1, slots)
        self.v[:, row, :context] = self.pool.v.index_select(1, slots)
        self.rows.append(seq)
        self.lengths.append(context)
        self.epochs.append(seq.kv_epoch)

    def _drop(self, row: int) -> None:
        last = len(self.rows) - 1
        if row != last:
            n = self.lengths[last]
            self.k[:, row, :n] = self.k[:, last, :n]
            self.v[:, row, :n] = self.v[:, last, :n]
            self.rows[row], self.lengths[row], self.epochs[row] = self.rows[last], self.lengths[last], self.epochs[last]
        self.rows.pop()
        self.lengths.pop()
        self.epochs.pop()
        if not self.rows:  # nobody decodes: give the memory back
            self.k = self.v = None

    def _reserve(self, num_rows: int, length: int) -> None:
        """Grow (doubling) to hold `num_rows` rows of `length` tokens; the contents are kept."""
        if self.k is not None and num_rows <= self.k.shape[1] and length <= self.k.shape[2]:
            return
        layers, _, heads, dim = self.pool.k.shape
        old_rows, old_len = (0, 0) if self.k is None else self.k.shape[1:3]
        rows = old_rows if num_rows <= old_rows else max(num_rows, 2 * old_rows)  # grow only what is short
        length = old_len if length <= old_len else max(length, 2 * old_len, 64)
        shape = (layers, rows, length, heads, dim)
        grown = []
        for old in (self.k, self.v):
            new = torch.empty(shape, dtype=self.pool.k.dtype)
            # positions past a row's length are masked, but must not hold NaN garbage: zero what is not copied
            new[:, old_rows:].zero_()
            new[:, :old_rows, old_len:].zero_()
            if old is not None:
                new[:, :old_rows, :old_len] = old
            grown.append(new)
        self.k, self.v = grown
