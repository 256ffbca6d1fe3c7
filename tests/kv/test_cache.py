"""Bookkeeping invariants of the shared paged KV cache (no model needed)."""
import pytest
import torch

from gboost.kv.cache import KVCache, KVPoolExhausted, ModelSpec

BS = 4


def make_cache(num_blocks=32, specs=None):
    specs = specs or [ModelSpec("a", 2, 2, 8)]
    return KVCache(specs, block_size=BS, num_blocks=num_blocks, dtype=torch.float32)


def write(cache, seq, n=None):
    """Pretend a forward pass computed the pending tokens: fill their slots with the token id."""
    n = seq.num_pending if n is None else n
    view = cache.view(seq.model)
    for slot, tok in zip(cache.reserve(seq, n), seq.token_ids[seq.num_computed:]):
        view[slot // BS, :, :, slot % BS] = float(tok)
    cache.commit(seq, n)


def read(cache, seq):
    view = cache.view(seq.model)
    return [int(view[seq.block_table[p // BS], 0, 0, p % BS, 0, 0]) for p in range(seq.num_computed)]


def test_page_holds_every_model_and_views_do_not_overlap_pages():
    cache = make_cache(specs=[ModelSpec("small", 2, 1, 4), ModelSpec("big", 3, 2, 8)])
    assert cache.page_elems == 3 * 2 * BS * 2 * 8
    assert cache.view("small").shape == (32, 2, 2, BS, 1, 4)
    assert cache.view("big").shape == (32, 3, 2, BS, 2, 8)
    assert cache.view("small").data_ptr() == cache.view("big").data_ptr()


def test_memory_budget_sizes_the_pool():
    spec = ModelSpec("a", 2, 2, 8)
    page = spec.elems_per_block(BS) * 2  # bf16
    cache = KVCache([spec], block_size=BS, memory_bytes=10 * page + 1)
    assert cache.blocks.num_blocks == 10
    with pytest.raises(ValueError, match="below one page"):
        KVCache([spec], block_size=BS, memory_bytes=page - 1)


def test_fork_shares_blocks_and_copy_on_write_keeps_parent_intact():
    cache = make_cache()
    parent = cache.new_sequence("a", list(range(1, 11)))  # 2 full blocks + 2 tokens
    write(cache, parent)
    kids = [cache.fork(parent) for _ in range(3)]
    assert all(k.block_table == parent.block_table for k in kids)
    assert [cache.blocks.ref[b] for b in parent.block_table] == [4, 4, 4]
    for i, k in enumerate(kids):
        k.token_ids.append(100 + i)
        write(cache, k)
    cache.check_refcounts()
    assert read(cache, parent) == list(range(1, 11))
    for i, k in enumerate(kids):
        assert read(cache, k) == list(range(1, 11)) + [100 + i]
        assert k.block_table[:2] == parent.block_table[:2]      # full blocks shared
        assert k.block_table[2] != parent.block_table[2]        # partial block copied
    for s in kids + [parent]:
        cache.free(s)
    cache.check_refcounts()
    assert cache.blocks.num_free() == 32


def test_prefix_cache_hit_and_lru_eviction():
    cache = make_cache(num_blocks=6)
    a = cache.new_sequence("a", list(range(9)))
    write(cache, a)
    cache.free(a)  # its 2 full blocks stay cached, unreferenced
    b = cache.new_sequence("a", list(range(9)) + [42])
    assert b.cached_tokens == 8 and b.num_computed == 8
    write(cache, b)
    assert read(cache, b) == list(range(9)) + [42]
    cache.free(b)
    # Another model's identical tokens must not hit this model's blocks.
    cache2 = make_cache(specs=[ModelSpec("a", 2, 2, 8), ModelSpec("b", 2, 2, 8)])
    x = cache2.new_sequence("a", list(range(9)))
    write(cache2, x)
    assert cache2.new_sequence("b", list(range(9))).cached_tokens == 0
    # Filling the pool evicts cached blocks instead of failing.
    c = cache.new_sequence("a", list(range(100, 124)))
    write(cache, c)
    assert cache.new_sequence("a", list(range(9)) + [1]).cached_tokens == 0
    cache.check_refcounts()


def test_last_token_is_never_served_from_cache():
    cache = make_cache()
    a = cache.new_sequence("a", list(range(8)))
    write(cache, a)
    b = cache.new_sequence("a", list(range(8)))
    assert b.num_computed == 4 and b.num_pending == 4


def test_truncate_then_append_never_corrupts_a_shared_block():
    cache = make_cache()
    a = cache.new_sequence("a", list(range(1, 9)))
    write(cache, a)
    b = cache.fork(a)
    cache.truncate(b, 6)
    b.token_ids += [77, 78, 79]
    write(cache, b)
    assert read(cache, a) == list(range(1, 9))
    assert read(cache, b) == [1, 2, 3, 4, 5, 6, 77, 78, 79]
    # A published (hashed) block with a single owner is immutable too.
    cache.free(a)
    c = cache.new_sequence("a", list(range(1, 10)))
    write(cache, c)
    cache.truncate(c, 3)
    c.token_ids += [55]
    write(cache, c)
    d = cache.new_sequence("a", list(range(1, 10)))
    assert d.cached_tokens == 8
    write(cache, d)
    assert read(cache, d) == list(range(1, 10))
    cache.check_refcounts()


def test_exhaustion_is_clean_and_recoverable():
    cache = make_cache(num_blocks=4)
    a = cache.new_sequence("a", list(range(12)))
    write(cache, a)
    b = cache.new_sequence("a", list(range(50, 58)))
    before = (list(cache.blocks.ref), b.num_computed, list(b.block_table))
    with pytest.raises(KVPoolExhausted, match="exhausted"):
        cache.reserve(b, 8)
    assert (list(cache.blocks.ref), b.num_computed, list(b.block_table)) == before
    cache.free(a)
    write(cache, b)
    assert read(cache, b) == list(range(50, 58))
    cache.free(b)
    cache.check_refcounts()
    assert cache.blocks.num_free() == 4 and all(r == 0 for r in cache.blocks.ref)


def test_use_after_free_is_refused():
    cache = make_cache()
    a = cache.new_sequence("a", [1, 2, 3])
    cache.free(a)
    with pytest.raises(RuntimeError, match="freed"):
        cache.fork(a)


def test_rewind_keeps_tokens_and_recomputes_into_a_private_block():
    cache = make_cache()
    a = cache.new_sequence("a", list(range(1, 9)))
    write(cache, a)
    b = cache.fork(a)
    cache.rewind(b, 5)
    assert b.token_ids == list(range(1, 9)) and b.num_computed == 5 and b.num_pending == 3
    write(cache, b)
    assert read(cache, b) == read(cache, a) == list(range(1, 9))
    assert b.block_table[1] != a.block_table[1]
    cache.check_refcounts()


def test_eviction_takes_a_freed_chain_tail_first():
    # A head evicted first would strand the rest of the chain: lookups stop at the first miss.
    cache = make_cache(num_blocks=5)
    a = cache.new_sequence("a", list(range(17)))      # 4 full blocks + 1 token
    write(cache, a)
    cache.free(a)                                       # 4 cached blocks, 1 free
    b = cache.new_sequence("a", list(range(200, 208)))  # takes the free block and evicts one cached
    write(cache, b)
    assert cache.new_sequence("a", list(range(17))).cached_tokens == 12
    # truncate gives its blocks back tail first too
    c = make_cache(num_blocks=5)
    d = c.new_sequence("a", list(range(17)))
    write(c, d)
    e = c.fork(d)
    c.truncate(e, 0)                                     # nothing freed: d still holds every block
    c.truncate(d, 0)                                     # d's 5 blocks back: 4 cached, 1 free
    f = c.new_sequence("a", list(range(300, 308)))
    write(c, f)
    assert c.new_sequence("a", list(range(17))).cached_tokens == 12
    c.check_refcounts()


def test_preempt_gives_back_only_the_unshared_tail_and_the_prefix_cache_restores_it():
    cache = make_cache(num_blocks=16)
    a = cache.new_sequence("a", list(range(1, 11)))          # blocks: [1-4] [5-8] [9,10]
    write(cache, a)
    b = cache.fork(a)
    b.token_ids += [20, 21, 22, 23, 24]                       # b: CoW of [9,10] + one more block
    write(cache, b)
    shared = a.block_table[:2]
    assert cache.preemptible_blocks(b) == 2 and cache.preemptible_blocks(a) == 1
    free_before = cache.blocks.num_free()
    assert cache.preempt(b) == 7                              # back to the shared 8 tokens
    assert b.num_computed == 8 and b.block_table == shared and len(b) == 15
    assert cache.blocks.num_free() == free_before + 2
    assert read(cache, a) == list(range(1, 11))               # the other holder is untouched
    cache.check_refcounts()
    # b's dropped full block [9,10,20,21] was published: matching gets it back (not the last token)
    assert cache.match_cached_prefix(b) == 4 and b.num_computed == 12
    write(cache, b)
    assert read(cache, b) == list(range(1, 11)) + [20, 21, 22, 23, 24]
    # a partial last block blocks matching (its K/V is not in any published block)
    c = cache.new_sequence("a", list(range(1, 7)))
    write(cache, c)
    assert c.num_computed == 6 and cache.match_cached_prefix(c) == 0
    assert cache.preempt(cache.fork(a)) == 0                   # everything shared: nothing to give
    for s in list(cache.live.values()):
        cache.free(s)
    cache.check_refcounts()
    assert all(r == 0 for r in cache.blocks.ref)


def test_refcount_errors_counts_what_check_refcounts_refuses():
    cache = make_cache()
    a = cache.new_sequence("a", list(range(40)))
    cache.reserve(a, 40)
    cache.commit(a, 40)
    b = cache.fork(a)
    assert cache.refcount_errors() == 0
    cache.blocks.ref[a.block_table[0]] += 1   # a leaked reference: held by no table
    assert cache.refcount_errors() == 1
    with pytest.raises(AssertionError, match="refcount mismatch"):
        cache.check_refcounts()
    cache.blocks.ref[a.block_table[0]] -= 1
    cache.free(a)
    cache.free(b)
    assert cache.refcount_errors() == 0
