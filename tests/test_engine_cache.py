"""KV slot allocator and radix prefix cache: reference counts, prefix matching, LRU eviction."""

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from apr_ds.engine.kv_pool import KVPool
from apr_ds.engine.prefix_cache import RadixCache


def make_pool(capacity=32):
    return KVPool(num_layers=1, num_kv_heads=1, head_dim=2, capacity=capacity, dtype=torch.float32)


def test_slot_is_freed_only_when_its_last_reference_goes():
    pool = make_pool(8)
    slots = pool.alloc(3)
    pool.retain(slots[:2])
    pool.release(slots)
    assert pool.num_free == 8 - 2  # two slots are still referenced
    pool.release(slots[:2])
    assert pool.num_free == 8
    pool.check_invariants()


def test_padding_slot_zero_is_never_handed_out_and_stays_zero():
    pool = make_pool(4)
    slots = pool.alloc(4)
    assert 0 not in slots.tolist()
    assert pool.alloc(1) is None
    assert bool((pool.k[:, 0] == 0).all()) and bool((pool.v[:, 0] == 0).all())


def test_match_returns_the_longest_cached_prefix_and_insert_splits_edges():
    pool = make_pool()
    cache = RadixCache(pool)
    a = pool.alloc(4)
    assert cache.insert([1, 2, 3, 4], a) == 0
    assert cache.match_prefix([1, 2, 3, 9]).tolist() == a[:3].tolist()
    b = pool.alloc(3)
    assert cache.insert([1, 2, 5], b) == 2  # [1, 2] was cached: the cache keeps a's slots for it
    assert cache.match_prefix([1, 2, 5, 6]).tolist() == a[:2].tolist() + b[2:].tolist()
    assert cache.match_prefix([7]).tolist() == []
    assert cache.num_tokens == 5
    cache.check_invariants()


def test_eviction_takes_least_recently_used_leaves_and_spares_prefixes_in_use():
    pool = make_pool(6)
    cache = RadixCache(pool)
    old, new = pool.alloc(3), pool.alloc(3)
    cache.insert([1, 1, 1], old)
    cache.insert([2, 2, 2], new)
    pool.release(old)
    pool.release(new)  # only the cache holds them now
    cache.match_prefix([1, 1, 1])  # touch: [2, 2, 2] is now least recently used
    assert cache.evict(1) == 3
    assert cache.match_prefix([2, 2, 2]).tolist() == []
    assert cache.match_prefix([1, 1, 1]).tolist() == old.tolist()
    pool.retain(old)  # a running request uses [1, 1, 1]: evicting it would free nothing
    assert cache.evict(3) == 0
    assert cache.match_prefix([1, 1, 1]).tolist() == old.tolist()


def test_reset_drops_cache_references_but_running_requests_keep_theirs():
    pool = make_pool(8)
    cache = RadixCache(pool)
    slots = pool.alloc(4)
    cache.insert([5, 6, 7, 8], slots)  # the "request" still holds its own references
    cache.reset()
    assert cache.match_prefix([5, 6, 7, 8]).tolist() == []
    assert pool.num_free == 4
    pool.release(slots)
    assert pool.num_free == 8
    pool.check_invariants()


operations = st.lists(st.one_of(
    st.tuples(st.just("insert"), st.lists(st.integers(0, 3), min_size=1, max_size=10)),
    st.tuples(st.just("match"), st.lists(st.integers(0, 3), min_size=1, max_size=10)),
    st.tuples(st.just("evict"), st.integers(1, 12)),
    st.tuples(st.just("reset"), st.none()),
), max_size=40)


@settings(max_examples=150, deadline=None)
@given(operations)
def test_cache_only_ever_reuses_kv_of_the_identical_prefix(ops):
    """Each slot is tagged with the exact prefix it was computed for; a match may only return slots
    whose prefix equals the query's. Without eviction the match is as long as any inserted prefix."""
    pool = make_pool(48)
    cache = RadixCache(pool)
    computed_for: dict[int, tuple] = {}
    inserted: list[list[int]] = []
    for op, arg in ops:
        if op == "insert":
            reused = cache.match_prefix(arg)[:len(arg)]
            pool.retain(reused)  # like a request: hold the prefix, compute the rest
            fresh = pool.alloc(len(arg) - len(reused))
            if fresh is None:
                cache.evict(len(arg) - len(reused) - pool.num_free)
                fresh = pool.alloc(len(arg) - len(reused))
            if fresh is None:
                pool.release(reused)
                continue
            for i, slot in enumerate(fresh.tolist(), start=len(reused)):
                computed_for[slot] = tuple(arg[:i + 1])
            slots = torch.cat([reused, fresh])
            cache.insert(arg, slots)
            pool.release(slots)  # the request finishes; only the cache holds them now
            inserted.append(arg)
        elif op == "match":
            got = cache.match_prefix(arg).tolist()
            assert all(computed_for[s] == tuple(arg[:i + 1]) for i, s in enumerate(got))
            if not any(o in ("evict", "reset") for o, _ in ops):
                best = max((_common(arg, seq) for seq in inserted), default=0)
                assert len(got) == best
        elif op == "evict":
            cache.evict(arg)
        else:
            cache.reset()
            inserted.clear()
        cache.check_invariants()
        pool.check_invariants()
        assert pool.num_used == cache.num_tokens  # nothing else holds references between operations


def _common(a, b):
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sets(st.integers(0, 5), min_size=1), min_size=1, max_size=12), st.data())
def test_decode_slab_rows_always_mirror_the_pool(batches, data):
    """Through joins, leaves (row compaction), growth and retraction, each slab row holds exactly the
    pool KV of its sequence's context, and decode steps append in place."""
    from apr_ds.engine.decode_slab import DecodeSlab
    from apr_ds.engine.sequence import SamplingParams, Sequence

    pool = make_pool(400)
    pool.k.normal_()
    pool.v.normal_()
    slab = DecodeSlab(pool)
    seqs = [Sequence(str(i), [1] * (i + 1), SamplingParams(), 100) for i in range(6)]
    for seq in seqs:  # a context of i + 1 tokens plus the slot of the token about to be fed
        seq.append_slots(pool.alloc(seq.num_tokens + 1))
    for members in batches:
        batch = [seqs[i] for i in sorted(members)]
        if data.draw(st.booleans()):  # a retraction: KV dropped and recomputed into new slots
            victim = data.draw(st.sampled_from(batch))
            n = victim.num_kv
            pool.release(victim.drop_slots())
            victim.append_slots(pool.alloc(n))
            pool.k[:, victim.kv_slots] = torch.randn(1, n, 1, 2)
        rows = slab.arrange(batch)
        assert set(rows) == set(batch)
        for row, seq in enumerate(rows):
            context = seq.kv_slots[:seq.num_kv - 1]
            assert torch.equal(slab.k[:, row, :len(context)], pool.k[:, context])
            assert torch.equal(slab.v[:, row, :len(context)], pool.v[:, context])
        for row, seq in enumerate(rows):  # the decode step: the new token's KV goes to the pool and the slab
            new = torch.randn(1, 1, 2)
            pool.k[0, seq.kv_slots[-1]] = new
            slab.k[0, row, seq.num_kv - 1] = new
            pool.v[0, seq.kv_slots[-1]] = new
            slab.v[0, row, seq.num_kv - 1] = new
        slab.advance()
        for seq in batch:  # the slot of the next token
            seq.append_slots(pool.alloc(1))
