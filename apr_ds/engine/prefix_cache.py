"""Radix prefix cache: a tree over token ids whose edges carry the KV slots of those tokens.

A new request reuses the KV of its longest cached prefix (`match_prefix`) and only computes the rest.
Finished requests insert all their computed tokens, generated ones included, so a parent that
resumes with prompt + output + join text hits the cache for its whole previous context.

The tree holds one reference on each of its slots (kv_pool.py). Eviction drops least recently used
leaves whose slots nobody else references; nodes in use by running requests are skipped, which is
what SGLang's lock counts do. `reset` drops everything: running requests keep their own references.

    cache = RadixCache(pool)
    slots = cache.match_prefix(tokens)          # KV slots of tokens[:len(slots)]
    cache.insert(tokens, slots_of_all_tokens)   # the cache takes its own references
"""

from __future__ import annotations

import heapq
import itertools

import torch

from apr_ds.engine.kv_pool import KVPool


class Node:
    __slots__ = ("children", "parent", "key", "slots", "last_access")

    def __init__(self, parent: "Node | None", key: list[int], slots: torch.Tensor, last_access: int):
        self.children: dict[int, Node] = {}  # first token of the child's key -> child
        self.parent = parent
        self.key = key
        self.slots = slots
        self.last_access = last_access


def _common_prefix_len(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    for i in range(n):
        if a[i] != b[i]:
            return i
    return n


class RadixCache:
    def __init__(self, pool: KVPool):
        self.pool = pool
        self._clock = itertools.count()  # a logical clock keeps LRU order deterministic
        self.root = Node(None, [], torch.zeros(0, dtype=torch.long), 0)
        self.num_tokens = 0

    def match_prefix(self, tokens: list[int]) -> torch.Tensor:
        """KV slots of the longest cached prefix of `tokens` (possibly ending inside an edge)."""
        now = next(self._clock)
        node, i, parts = self.root, 0, []
        while i < len(tokens) and tokens[i] in node.children:
            child = node.children[tokens[i]]
            n = _common_prefix_len(child.key, tokens[i:])
            child.last_access = now
            parts.append(child.slots[:n])
            i += n
            if n < len(child.key):
                break
            node = child
        return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)

    def insert(self, tokens: list[int], slots: torch.Tensor) -> int:
        """Cache `tokens` with their KV `slots`; returns how many leading tokens were cached already
        (for those the cache keeps its existing slots and the caller's duplicates stay the caller's)."""
        assert len(tokens) == len(slots), (len(tokens), len(slots))
        now = next(self._clock)
        node, i = self.root, 0
        while i < len(tokens):
            child = node.children.get(tokens[i])
            if child is None:
                leaf = Node(node, tokens[i:], slots[i:].clone(), now)
                self.pool.retain(leaf.slots)
                node.children[tokens[i]] = leaf
                self.num_tokens += len(leaf.key)
                return i
            n = _common_prefix_len(child.key, tokens[i:])
            if n < len(child.key):
                child = self._split(child, n)
            child.last_access = now
            node, i = child, i + n
        return i

    def _split(self, child: Node, n: int) -> Node:
        """Cut `child`'s edge after `n` tokens; returns the new upper node. References are unchanged."""
        upper = Node(child.parent, child.key[:n], child.slots[:n], child.last_access)
        upper.parent.children[upper.key[0]] = upper
        child.key, child.slots, child.parent = child.key[n:], child.slots[n:], upper
        upper.children[child.key[0]] = child
        return upper

    def evict(self, num_tokens: int) -> int:
        """Free at least `num_tokens` slots if possible, least recently used leaves first. Returns slots freed."""
        free_before = self.pool.num_free
        heap = [(leaf.last_access, id(leaf), leaf) for leaf in self._leaves()]
        heapq.heapify(heap)
        while heap and self.pool.num_free - free_before < num_tokens:
            _, _, leaf = heapq.heappop(heap)
            if self.pool.in_use_elsewhere(leaf.slots):
                continue  # a running request uses it: evicting would free nothing
            self._remove_leaf(leaf)
            parent = leaf.parent
            if parent is not self.root and not parent.children:
                heapq.heappush(heap, (parent.last_access, id(parent), parent))
        return self.pool.num_free - free_before

    def _remove_leaf(self, leaf: Node) -> None:
        del leaf.parent.children[leaf.key[0]]
        self.pool.release(leaf.slots)
        self.num_tokens -= len(leaf.key)

    def _leaves(self) -> list[Node]:
        leaves, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            if node.children:
                stack.extend(node.children.values())
            else:
                leaves.append(node)
        return leaves

    def reset(self) -> None:
        """Drop every cached prefix (flush_cache, weight updates). Running requests keep their own references."""
        stack = list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            self.pool.release(node.slots)
        self.root.children.clear()
        self.num_tokens = 0

    def node_slots(self) -> list[torch.Tensor]:
        slots, stack = [], list(self.root.children.values())
        while stack:
            node = stack.pop()
            stack.extend(node.children.values())
            slots.append(node.slots)
        return slots

    def check_invariants(self) -> None:
        total, stack = 0, [self.root]
        while stack:
            node = stack.pop()
            for first, child in node.children.items():
                assert child.parent is node and child.key and child.key[0] == first
                assert len(child.key) == len(child.slots)
                assert bool((self.pool.refs[child.slots] >= 1).all()), "the cache points at a free slot"
                total += len(child.key)
                stack.append(child)
        assert total == self.num_tokens, (total, self.num_tokens)
