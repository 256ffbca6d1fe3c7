"""One paged KV pool shared by every resident model; block tables per (model, sequence).

Every model sees the same pool of pages. A page holds BS tokens of K and V for *all* layers
of one model: `pool[b, :L*2*BS*Hkv*D]` viewed as [L, 2, BS, Hkv, D]. Pages are sized for the
largest model, so a smaller model leaves the tail of its page unused; the win is a single
budget, one allocator and one eviction order for SLM, PRM and LLM alike.

Sequence lifecycle: `new_sequence` (prefix-cache match) -> `append` tokens -> `begin_run` and
`reserve_run` (slots) -> a forward writes K/V -> `finish_run` (full blocks get published by
content hash) ... `fork` / `truncate` / `rewind` / `preempt` / `free`. Every field of a Sequence
changes only through these methods.
A block that is shared (ref > 1) or published (hashed) is immutable: writing into it copies
it first (copy-on-write), so forks and cached prefixes are never corrupted.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from itertools import count

import torch

from gboost.kv.block_pool import BlockPool, KVPoolExhausted

__all__ = ["KVCache", "ModelSpec", "Sequence", "SeqStatus", "KVPoolExhausted"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    num_layers: int
    num_kv_heads: int
    head_dim: int

    def elems_per_block(self, block_size: int) -> int:
        return self.num_layers * 2 * block_size * self.num_kv_heads * self.head_dim


class SeqStatus(enum.Enum):
    NEW = "new"              # made by new_sequence, never run
    RUN = "run"              # ran, or forked from a sequence that was not preempted: not re-matched
    PREEMPTED = "preempted"  # cut back by preempt since it last ran; forks inherit this
    FREED = "freed"          # its blocks are back in the pool; it must not be used again


@dataclass
class Sequence:
    """Token ids of one sequence of one model; the first `num_computed` have K/V in the pool."""
    seq_id: int
    model: str
    token_ids: list[int]
    num_computed: int = 0
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hash of each full computed block
    cached_tokens: int = 0  # tokens served from the prefix cache at creation
    last_run: int = 0       # cache.runs when a forward last computed this sequence (preemption is LRU)
    born: int = 0           # seq_id of the new_sequence it descends from (forks inherit): request age
    version: int = 0        # bumped by truncate/rewind/preempt/free: a batch never commits onto a changed table
    last_computed: int = 0  # tokens its latest forward computed (callers charge this after the forward)
    last_hit: int = 0       # tokens its latest forward took from the prefix cache instead (late match)
    batch_version: int = -1  # version when its current batch was prepared
    status: SeqStatus = SeqStatus.RUN  # set by KVCache only
    #: the LoRA adapter its model runs it with (None: the base weights); part of its prefix
    #: hashes, so a base and a tuned sequence of the same tokens never share K/V
    adapter: str | None = None

    def __len__(self) -> int:
        return len(self.token_ids)

    @property
    def freed(self) -> bool:
        return self.status is SeqStatus.FREED

    @property
    def matches_on_run(self) -> bool:
        """Never run, or preempted: its next forward first extends its computed prefix from the
        prefix cache (blocks published since, e.g. by a concurrent twin)."""
        return self.status in (SeqStatus.NEW, SeqStatus.PREEMPTED)

    @property
    def num_pending(self) -> int:
        return len(self.token_ids) - self.num_computed


class KVCache:
    def __init__(self, specs: list[ModelSpec], *, block_size: int = 16, num_blocks: int | None = None,
                 memory_bytes: int | None = None, dtype: torch.dtype = torch.bfloat16,
                 device: str | torch.device = "cpu"):
        if not specs:
            raise ValueError("KVCache needs at least one model spec")
        if not 1 <= block_size <= 256:
            raise ValueError(f"block_size must be in [1, 256], got {block_size}")
        self.block_size = block_size
        self.specs = {s.name: s for s in specs}
        self.model_index = {s.name: i for i, s in enumerate(specs)}
        self.page_elems = max(s.elems_per_block(block_size) for s in specs)
        page_bytes = self.page_elems * torch.empty((), dtype=dtype).element_size()
        if num_blocks is None:
            if memory_bytes is None:
                raise ValueError("give num_blocks or memory_bytes")
            num_blocks = memory_bytes // page_bytes
            if num_blocks < 1:
                raise ValueError(f"KV memory budget {memory_bytes} B is below one page ({page_bytes} B)")
        self.page_bytes = page_bytes
        self.pool = torch.zeros(num_blocks, self.page_elems, dtype=dtype, device=device)
        self.blocks = BlockPool(num_blocks)
        self._ids = count()
        self.live: dict[int, Sequence] = {}
        self.runs = 0  # forward passes over this pool; stamps Sequence.last_run
        self.late_hit_tokens = 0  # tokens matched when a sequence ran rather than when it was made

    # -- views for the attention layers ----------------------------------------
    def view(self, model: str) -> torch.Tensor:
        """[num_blocks, L, 2, BS, Hkv, D] view of the pool for one model."""
        s = self.specs[model]
        n = s.elems_per_block(self.block_size)
        return self.pool[:, :n].view(-1, s.num_layers, 2, self.block_size, s.num_kv_heads, s.head_dim)

    # -- sequence lifecycle -----------------------------------------------------
    def new_sequence(self, model: str, token_ids: list[int], adapter: str | None = None) -> Sequence:
        """A sequence whose longest cached full-block prefix is reused (never its last token,
        which must be computed to produce logits); ``adapter``: the LoRA adapter it runs with."""
        if model not in self.specs:
            raise KeyError(f"unknown model {model!r}; resident: {sorted(self.specs)}")
        seq = Sequence(next(self._ids), model, list(token_ids), adapter=adapter)
        seq.born = seq.seq_id
        seq.cached_tokens = self.match_cached_prefix(seq)
        seq.status = SeqStatus.NEW
        self.live[seq.seq_id] = seq
        return seq

    def append(self, seq: Sequence, token_ids: list[int]) -> None:
        """Add tokens at the end of seq: pending until a forward computes them."""
        self._check_live(seq)
        seq.token_ids.extend(token_ids)

    def match_cached_prefix(self, seq: Sequence) -> int:
        """Extend seq's computed prefix with published blocks of the same tokens (never its last
        token); returns the tokens gained. Only from a block boundary with no partial block, e.g.
        a new sequence or one cut back by `preempt`."""
        self._check_live(seq)
        if seq.num_computed != len(seq.block_table) * self.block_size or len(seq.block_hashes) != len(seq.block_table):
            return 0
        parent = seq.block_hashes[-1] if seq.block_hashes else self._root_hash(seq.model, seq.adapter)
        start = len(seq.block_table)
        for b, h in self._cached_blocks(parent, seq.token_ids, start):
            self.blocks.incref(b)
            seq.block_table.append(b)
            seq.block_hashes.append(h)
        gained = (len(seq.block_table) - start) * self.block_size
        seq.num_computed += gained
        return gained

    def cached_prefix_len(self, model: str, token_ids: list[int], adapter: str | None = None) -> int:
        """Tokens a new sequence of ``token_ids`` would take from the prefix cache (full blocks,
        never the last token); reads the cache without holding anything."""
        return sum(1 for _ in self._cached_blocks(self._root_hash(model, adapter), token_ids, 0)) * self.block_size

    def _cached_blocks(self, parent: int, token_ids: list[int], start: int):
        """(block, hash) of each published block that holds ``token_ids``' full blocks from block
        ``start`` on (after the chained hash ``parent``), up to the first miss; never the last token."""
        bs = self.block_size
        for i in range(start, (len(token_ids) - 1) // bs if token_ids else 0):
            key = (parent, tuple(token_ids[i * bs:(i + 1) * bs]))
            h = hash(key)
            b = self.blocks.lookup(h, key)
            if b is None:
                return
            yield b, h
            parent = h

    def preemptible_blocks(self, seq: Sequence) -> int:
        """Blocks `preempt(seq)` would give back: the tail that no other sequence holds."""
        n = 0
        for b in reversed(seq.block_table):
            if self.blocks.ref[b] > 1:
                break
            n += 1
        return n

    def preempt(self, seq: Sequence) -> int:
        """Give back seq's unshared tail blocks, keeping its token ids: the dropped tokens become
        pending and are recomputed (or matched again from the prefix cache, since published
        blocks stay cached until evicted) by its next forward. Returns the tokens dropped."""
        self._check_live(seq)
        n = self.preemptible_blocks(seq)
        if n == 0:
            return 0
        before, tokens = seq.num_computed, list(seq.token_ids)
        # cut to the kept blocks; blocks reserved past num_computed (a failed batch) go too
        self.truncate(seq, min(before, (len(seq.block_table) - n) * self.block_size))
        seq.token_ids = tokens
        seq.status = SeqStatus.PREEMPTED
        return before - seq.num_computed

    def blocks_needed(self, seq: Sequence, n_new: int) -> int:
        """Fresh blocks that `reserve(seq, n_new)` would take (including a copy-on-write)."""
        bs, start = self.block_size, seq.num_computed
        need = max(-(-(start + n_new) // bs) - len(seq.block_table), 0)
        return need + (1 if self._needs_copy(seq, n_new) else 0)

    def _needs_copy(self, seq: Sequence, n_new: int) -> bool:
        """Is the block the next write lands in shared or published (so it must be copied first)?"""
        first = seq.num_computed // self.block_size
        return bool(n_new) and first < len(seq.block_table) and self._immutable(seq.block_table[first])

    def can_reserve(self, seqs_and_counts: list[tuple[Sequence, int]]) -> bool:
        return self.blocks.can_allocate(sum(self.blocks_needed(s, n) for s, n in seqs_and_counts))

    def reserve(self, seq: Sequence, n_new: int) -> list[int]:
        """Slots for tokens num_computed .. num_computed+n_new; raises KVPoolExhausted untouched."""
        self._check_live(seq)
        if not self.blocks.can_allocate(self.blocks_needed(seq, n_new)):
            raise KVPoolExhausted(
                f"KV pool exhausted: sequence {seq.seq_id} needs {self.blocks_needed(seq, n_new)} blocks, "
                f"{self.blocks.num_free()} free of {self.blocks.num_blocks}")
        bs, start = self.block_size, seq.num_computed
        if self._needs_copy(seq, n_new):
            self._copy_on_write(seq, start // bs)
        while len(seq.block_table) * bs < start + n_new:
            seq.block_table.append(self.blocks.allocate())
        return [seq.block_table[p // bs] * bs + p % bs for p in range(start, start + n_new)]

    def commit(self, seq: Sequence, n: int) -> None:
        """After the forward wrote n tokens: advance and publish blocks that became full."""
        seq.num_computed += n
        bs = self.block_size
        full = seq.num_computed // bs
        parent = seq.block_hashes[-1] if seq.block_hashes else self._root_hash(seq.model, seq.adapter)
        for i in range(len(seq.block_hashes), full):
            key = (parent, tuple(seq.token_ids[i * bs:(i + 1) * bs]))
            h = hash(key)
            self.blocks.register(seq.block_table[i], h, key)
            seq.block_hashes.append(h)
            parent = h

    # -- one forward ---------------------------------------------------------------
    def begin_run(self, seq: Sequence, rematch: bool) -> None:
        """Before seq joins a forward. With ``rematch`` (only its last row is wanted) a sequence
        that never ran, or was preempted, first takes what the prefix cache now holds; a sequence
        with nothing pending recomputes its last token (its logits are wanted)."""
        seq.last_hit = 0
        if rematch and seq.matches_on_run:
            seq.last_hit = self.match_cached_prefix(seq)
            self.late_hit_tokens += seq.last_hit
        if seq.num_pending == 0:
            self.rewind(seq, seq.num_computed - 1)

    def reserve_run(self, seq: Sequence) -> list[int]:
        """Slots for all of seq's pending tokens; finish_run commits only onto this table."""
        seq.batch_version = seq.version
        return self.reserve(seq, seq.num_pending)

    def finish_run(self, seqs: list[Sequence], computed: list[int]) -> None:
        """A forward wrote ``computed[i]`` tokens of ``seqs[i]``: commit them and mark each run."""
        self.runs += 1
        for seq, n in zip(seqs, computed):
            seq.last_computed = n
            # a request cancelled while the batch ran may have freed or cut back its sequence:
            # its new K/V went to blocks it no longer holds, so nothing is committed
            if not seq.freed and seq.version == seq.batch_version:
                self.commit(seq, n)
                seq.last_run, seq.status = self.runs, SeqStatus.RUN

    def fork(self, seq: Sequence) -> Sequence:
        """A child sharing every block; the partly filled last block is copied on the first write."""
        self._check_live(seq)
        keep = -(-seq.num_computed // self.block_size)  # reserved-but-unwritten blocks stay with the parent
        child = Sequence(next(self._ids), seq.model, list(seq.token_ids), seq.num_computed,
                         list(seq.block_table[:keep]), list(seq.block_hashes), adapter=seq.adapter)
        # what a preempted parent lost may still be cached for the child; a fresh parent's child
        # is not re-matched, so a repeated request computes the same chunks and repeats exactly
        child.status = SeqStatus.PREEMPTED if seq.status is SeqStatus.PREEMPTED else SeqStatus.RUN
        child.born = seq.born
        for b in child.block_table:
            self.blocks.incref(b)
        self.live[child.seq_id] = child
        return child

    def truncate(self, seq: Sequence, n: int) -> None:
        """Keep the first n tokens; blocks past them go back to the pool."""
        self._check_live(seq)
        if not 0 <= n <= len(seq.token_ids):
            raise ValueError(f"cannot truncate a {len(seq.token_ids)}-token sequence to {n}")
        seq.version += 1
        del seq.token_ids[n:]
        seq.num_computed = min(seq.num_computed, n)
        keep = -(-seq.num_computed // self.block_size)
        for b in reversed(seq.block_table[keep:]):  # tail first: see free()
            self.blocks.decref(b)
        del seq.block_table[keep:]
        del seq.block_hashes[seq.num_computed // self.block_size:]

    def rewind(self, seq: Sequence, n_computed: int) -> None:
        """Forget K/V past n_computed tokens but keep the token ids (they become pending again)."""
        self._check_live(seq)
        if n_computed >= seq.num_computed:
            return
        tokens = list(seq.token_ids)
        self.truncate(seq, n_computed)
        seq.token_ids = tokens

    def free(self, seq: Sequence) -> None:
        if seq.freed:
            return
        # Tail first, so LRU evicts a chain's tail before its head: a lookup stops at the first
        # missing block, so an evicted head would strand every cached block after it.
        for b in reversed(seq.block_table):
            self.blocks.decref(b)
        seq.block_table.clear()
        seq.block_hashes.clear()
        seq.status = SeqStatus.FREED
        seq.version += 1
        self.live.pop(seq.seq_id, None)

    # -- checks -----------------------------------------------------------------
    def check_refcounts(self) -> None:
        """Invariant: every block's reference count equals the number of tables holding it."""
        bad, n_free = self._refcount_problems()
        if bad:
            raise AssertionError(f"refcount mismatch on blocks {bad[:10]}")
        if n_free != self.blocks.num_free():
            raise AssertionError(f"{n_free} blocks have ref 0 but {self.blocks.num_free()} are free")

    def refcount_errors(self) -> int:
        """How many blocks break the invariant ``check_refcounts`` asserts (0 unless there is a
        bug); cheap enough for a server to report on /metrics (one pass over the tables)."""
        bad, n_free = self._refcount_problems()
        return len(bad) + abs(n_free - self.blocks.num_free())

    def _refcount_problems(self) -> tuple[list[int], int]:
        held = [0] * self.blocks.num_blocks
        for s in self.live.values():
            for b in s.block_table:
                held[b] += 1
        ref = self.blocks.ref
        bad = [] if held == ref else [b for b in range(len(held)) if held[b] != ref[b]]
        return bad, ref.count(0)

    # -- internals --------------------------------------------------------------
    def _immutable(self, b: int) -> bool:
        return self.blocks.ref[b] > 1 or self.blocks.is_hashed(b)

    def _copy_on_write(self, seq: Sequence, i: int) -> None:
        old, new = seq.block_table[i], self.blocks.allocate()
        self.pool[new].copy_(self.pool[old])
        self.blocks.decref(old)
        seq.block_table[i] = new

    def _root_hash(self, model: str, adapter: str | None = None) -> int:
        root = ("gboost-kv", self.model_index[model])
        return hash(root if adapter is None else root + (adapter,))

    def _check_live(self, seq: Sequence) -> None:
        if seq.freed:
            raise RuntimeError(f"sequence {seq.seq_id} was already freed")
