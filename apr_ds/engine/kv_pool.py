"""The KV cache: per-layer key/value storage indexed by slot, and a reference-counted slot allocator.

One slot holds one token's keys and values in every layer (SGLang's token-to-KV pool, page size 1).
Whoever uses a slot holds a reference: each running sequence on every slot of its context, and the
prefix cache on every slot of its tree. A slot returns to the free list when its count drops to 0,
so dropping the prefix cache (flush, weight update) is always safe, even while requests run.

Slot 0 is never handed out: it stays zero and pads ragged batches (a zero key/value is harmless
under the attention mask, whereas uninitialised memory could hold NaNs that leak through it).
"""

from __future__ import annotations

import torch


class KVPool:
    def __init__(self, num_layers: int, num_kv_heads: int, head_dim: int, capacity: int, dtype: torch.dtype):
        assert capacity >= 1, capacity
        self.capacity = capacity
        shape = (num_layers, capacity + 1, num_kv_heads, head_dim)
        self.k = torch.empty(shape, dtype=dtype)
        self.v = torch.empty(shape, dtype=dtype)
        self.k[:, 0].zero_()
        self.v[:, 0].zero_()
        self.refs = torch.zeros(capacity + 1, dtype=torch.int32)
        # Pop from the end: low slots first, which keeps a small run's memory compact.
        self._free = list(range(capacity, 0, -1))

    @property
    def num_free(self) -> int:
        return len(self._free)

    @property
    def num_used(self) -> int:
        return self.capacity - len(self._free)

    def alloc(self, n: int) -> torch.Tensor | None:
        """`n` fresh slots holding one reference each, or None if fewer than `n` are free."""
        if n > len(self._free):
            return None
        taken = self._free[len(self._free) - n:]
        del self._free[len(self._free) - n:]
        slots = torch.tensor(taken, dtype=torch.long)
        self.refs[slots] = 1
        return slots

    def retain(self, slots: torch.Tensor) -> None:
        if len(slots):
            assert bool((self.refs[slots] > 0).all()), "retaining a free slot"
            self.refs.index_add_(0, slots, torch.ones(len(slots), dtype=torch.int32))

    def release(self, slots: torch.Tensor) -> None:
        if not len(slots):
            return
        assert bool((self.refs[slots] > 0).all()), "releasing a free slot"
        self.refs.index_add_(0, slots, torch.full((len(slots),), -1, dtype=torch.int32))
        freed = torch.unique(slots[self.refs[slots] == 0])
        self._free.extend(freed.tolist())

    def in_use_elsewhere(self, slots: torch.Tensor) -> bool:
        """True if someone besides one owner (e.g. a running request besides the cache) holds any of these."""
        return bool((self.refs[slots] > 1).any())

    def check_invariants(self) -> None:
        free = torch.tensor(self._free, dtype=torch.long)
        assert len(set(self._free)) == len(self._free), "a slot is on the free list twice"
        assert 0 not in self._free, "the padding slot was freed"
        assert bool((self.refs[free] == 0).all()), "a referenced slot is on the free list"
        assert int((self.refs[1:] > 0).sum()) == self.num_used, "a slot is neither free nor referenced"
