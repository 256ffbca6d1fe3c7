"""Fixed-size KV blocks: reference counts, content-hash lookup, LRU of free cached blocks.

Pure bookkeeping (no tensors): engine/kv/cache.py owns the storage and the block tables.
Invariant: ref[b] == number of block tables holding b; a block with ref 0 is either in
`free_ids` (content meaningless) or in `lru` (content still valid under its hash).
"""
from __future__ import annotations

from collections import OrderedDict, deque


class KVPoolExhausted(RuntimeError):
    """Not enough free KV blocks; nothing was changed, so the caller may wait and retry."""


class BlockPool:
    def __init__(self, num_blocks: int):
        if num_blocks < 1:
            raise ValueError(f"KV pool needs at least one block, got {num_blocks}")
        self.num_blocks = num_blocks
        self.ref = [0] * num_blocks
        self.free_ids: deque[int] = deque(range(num_blocks))
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.hash_of: list[int | None] = [None] * num_blocks
        self.key_of: list[tuple | None] = [None] * num_blocks  # (parent hash, tokens): guards against hash collisions
        self.by_hash: dict[int, int] = {}

    # -- capacity -------------------------------------------------------------
    def num_free(self) -> int:
        return len(self.free_ids) + len(self.lru)

    def can_allocate(self, n: int) -> bool:
        return n <= self.num_free()

    # -- allocation -----------------------------------------------------------
    def allocate(self) -> int:
        """A block with ref 1 and no hash; evicts the least recently used cached block if needed."""
        if self.free_ids:
            b = self.free_ids.popleft()
        elif self.lru:
            b, _ = self.lru.popitem(last=False)
            self._drop_hash(b)
        else:
            raise KVPoolExhausted(f"all {self.num_blocks} KV blocks are in use")
        self.ref[b] = 1
        return b

    def incref(self, b: int) -> None:
        if self.ref[b] == 0:
            self.lru.pop(b, None)  # a cached block comes back into use
        self.ref[b] += 1

    def decref(self, b: int) -> None:
        if self.ref[b] <= 0:
            raise RuntimeError(f"block {b} freed more often than referenced")
        self.ref[b] -= 1
        if self.ref[b] == 0:
            if self.hash_of[b] is not None:
                self.lru[b] = None  # keep its content for later prefix hits
            else:
                self.free_ids.append(b)

    # -- prefix cache ---------------------------------------------------------
    def lookup(self, h: int, key: tuple) -> int | None:
        b = self.by_hash.get(h)
        if b is None or self.key_of[b] != key:
            return None
        return b

    def register(self, b: int, h: int, key: tuple) -> None:
        """Publish a full, immutable block under its chained content hash."""
        if self.hash_of[b] is not None:
            return
        if h in self.by_hash:  # an identical block already serves this content
            return
        self.hash_of[b], self.key_of[b] = h, key
        self.by_hash[h] = b

    def drop_cached(self) -> int:
        """Forget every cached free block (the LRU): its content no longer serves prefix hits, and
        it goes back to `free_ids`. Blocks in use keep their hashes. Returns how many were dropped."""
        n = len(self.lru)
        while self.lru:
            b, _ = self.lru.popitem(last=False)
            self._drop_hash(b)
            self.free_ids.append(b)
        return n

    def is_hashed(self, b: int) -> bool:
        return self.hash_of[b] is not None

    def _drop_hash(self, b: int) -> None:
        h = self.hash_of[b]
        if h is not None and self.by_hash.get(h) == b:
            del self.by_hash[h]
        self.hash_of[b] = self.key_of[b] = None
