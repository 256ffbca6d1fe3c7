"""KV pressure in the scheduler: idle sequences are preempted (recomputed later), hopeless work
fails alone, and a pool too small for every request at once still serves them all."""
import asyncio

import pytest
import torch

from gboost.kv.cache import KVPoolExhausted
from gboost.llm.local import LocalLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.sampling import SamplingParams
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.testing import tiny_engine

pytestmark = pytest.mark.timeout(120)


def reference_last_logits(prompts, device="cpu"):
    eng = tiny_engine({"slm": 1}, num_blocks=256, device=device)
    out = []
    for p in prompts:
        s = eng.cache.new_sequence(eng.role("slm").key, p)
        out.append(eng.role("slm").runner.run([s], "last")[0])
        eng.cache.free(s)
    return out


def test_preempted_sequences_are_recomputed_exactly(engine_device):
    eng = tiny_engine({"slm": 1}, num_blocks=12, device=engine_device)  # 12 blocks of 16: three 40-token prompts fill 9
    key, cache = eng.role("slm").key, eng.cache
    prompts = [[(7 * i + j) % 250 + 1 for j in range(40)] for i in range(5)]

    async def go():
        sched = Scheduler(eng)
        seqs = []
        for p in prompts[:4]:                       # 4 x 3 blocks: the pool is full, all idle
            s = cache.new_sequence(key, p)
            seqs.append(s)
            first = await sched.forward(s)
        assert cache.blocks.num_free() == 0
        fifth = cache.new_sequence(key, prompts[4])
        got = [await sched.forward(fifth)]          # fits only by preempting the least recently run
        assert sched.preemptions >= 1 and seqs[0].num_computed < 40
        assert seqs[3].num_computed == 40           # the most recently run is kept
        for s, p in zip(seqs, prompts):             # each grows by a token: more preemption, recompute
            s.token_ids.append(p[0])
        got += await sched.forward_many(seqs)
        sched.close()
        return first, got, seqs + [fifth]

    first, got, seqs = asyncio.run(go())
    want = reference_last_logits([prompts[4]] + [p + [p[0]] for p in prompts[:4]], engine_device)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-4)
    cache.check_refcounts()
    for s in seqs:
        cache.free(s)
    assert all(r == 0 for r in cache.blocks.ref)


def test_work_that_can_never_fit_fails_alone_and_idle_work_is_kept():
    eng = tiny_engine({"slm": 1}, num_blocks=8)
    key, cache = eng.role("slm").key, eng.cache

    async def go():
        sched = Scheduler(eng)
        idle = cache.new_sequence(key, list(range(1, 40)))
        await sched.forward(idle)                                  # 3 blocks, then idle
        big = cache.new_sequence(key, list(range(50, 250)))        # 13 blocks: more than the pool
        small = cache.new_sequence(key, [5, 6, 7])
        res = await asyncio.wait_for(asyncio.gather(sched.forward(big), sched.forward(small),
                                                    return_exceptions=True), 30)
        sched.close()
        return idle, big, small, res

    idle, big, small, (r_big, r_small) = asyncio.run(go())
    assert isinstance(r_big, KVPoolExhausted) and "need 13 blocks" in str(r_big)
    assert isinstance(r_small, torch.Tensor)
    assert idle.num_computed == 39                                  # not sacrificed for hopeless work
    assert big.num_computed == 0 and big.block_table == []
    cache.check_refcounts()


def test_decoding_requests_that_outgrow_the_pool_take_turns_by_age_and_all_finish():
    # 4 generations of 40 + 60 tokens need 7 blocks each, 28 in all, on a pool of 12: nothing is
    # idle, so the newest waiting sequences give their blocks to the oldest, which goes first
    prompts = [[(11 * i + j) % 250 + 1 for j in range(40)] for i in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    ref = tiny_engine({"slm": 1}, num_blocks=256)
    want = [ref.generate([p], params)[0].token_ids for p in prompts]
    eng = tiny_engine({"slm": 1}, num_blocks=12)

    async def go():
        sched = Scheduler(eng)
        outs = await asyncio.wait_for(asyncio.gather(*(eng.agenerate(sched, p, params) for p in prompts)), 60)
        sched.close()
        return sched, outs

    sched, outs = asyncio.run(go())
    assert [o.token_ids for o in outs] == want
    assert sched.preemptions > 0
    eng.cache.check_refcounts()
    assert eng.cache.live == {}


def test_with_preemption_off_the_oldest_work_fails_fast_and_the_rest_finish():
    prompts = [[(11 * i + j) % 250 + 1 for j in range(40)] for i in range(4)]
    params = SamplingParams(temperature=0.0, max_tokens=60, ignore_eos=True)
    eng = tiny_engine({"slm": 1}, num_blocks=12)

    async def go():
        sched = Scheduler(eng, preempt=False)
        outs = await asyncio.wait_for(asyncio.gather(*(eng.agenerate(sched, p, params) for p in prompts),
                                                     return_exceptions=True), 60)
        sched.close()
        return sched, outs

    sched, outs = asyncio.run(go())
    failed = [o for o in outs if isinstance(o, BaseException)]
    assert failed and all(isinstance(e, KVPoolExhausted) and "preemption is off" in str(e) for e in failed)
    assert len(failed) < len(outs) and sched.preemptions == 0
    eng.cache.check_refcounts()
    assert eng.cache.live == {}


def test_concurrent_searches_on_a_pool_too_small_for_all_complete_and_release_everything():
    # 8 gboost requests with a shared 160-token preamble on a pool that cannot hold all their
    # trees at once: before preemption, the first request that could not fit failed them all
    eng = tiny_engine({"slm": 1, "llm": 2, "prm": 2}, num_blocks=700)
    sched = Scheduler(eng)
    cfg = SearchConfig(method="gboost", max_step_tokens=16, max_depth=3, num_simulations=4,
                       temperature=0.8, top_p=1.0, seed=0)
    be = EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched),
                       prm=PRMScorer(eng, sched, PRMSpec(kind="judge", yes_token="Y")),
                       options=CollabOptions(collab_mode="speculative", max_draft=4))
    pre = "Solve it with care. " * 8

    async def go():
        return await asyncio.gather(*(solve(pre + f"Q{i}: {i}+{2 * i}?", be, cfg) for i in range(8)))

    res = asyncio.run(go())
    assert all(r.steps for r in res)
    assert sched.preemptions > 0 and sched.preempted_tokens > 0
    eng.cache.check_refcounts()
    assert eng.cache.live == {} and all(r == 0 for r in eng.cache.blocks.ref)


def test_a_new_sequence_matches_blocks_published_after_it_was_made():
    # twins made before either ran: the second runs over the first's published blocks
    eng = tiny_engine({"slm": 1}, num_blocks=32)
    key, cache, runner = eng.role("slm").key, eng.cache, eng.role("slm").runner
    prompt = [(5 * j) % 250 + 1 for j in range(40)]
    a, b = cache.new_sequence(key, prompt), cache.new_sequence(key, prompt)
    assert a.num_computed == b.num_computed == 0
    la = runner.run([a], "last")[0]
    before = runner.tokens_computed
    lb = runner.run([b], "last")[0]
    assert runner.tokens_computed - before == 8 and cache.late_hit_tokens == 32
    torch.testing.assert_close(lb, la, rtol=1e-4, atol=1e-4)
    c = cache.fork(b)                     # a sequence that has run is not re-matched
    c.token_ids += [1, 2]
    runner.run([c], "last")
    assert cache.late_hit_tokens == 32
    for s in (a, b, c):
        cache.free(s)
    cache.check_refcounts()


def test_work_of_a_freed_sequence_is_dropped_and_its_batch_goes_on():
    eng = tiny_engine({"slm": 1}, num_blocks=32)
    key, cache = eng.role("slm").key, eng.cache

    async def go():
        sched = Scheduler(eng)
        gone, kept = cache.new_sequence(key, [1, 2, 3]), cache.new_sequence(key, [4, 5, 6])
        f_gone, f_kept = sched._submit(gone, "last"), sched._submit(kept, "last")
        cache.free(gone)                  # e.g. its request failed while this forward waited
        out = await asyncio.wait_for(f_kept, 10)
        sched.close()
        return f_gone, out, kept

    f_gone, out, kept = asyncio.run(go())
    assert "freed while waiting" in str(f_gone.exception()) and out.shape[-1] > 0 and kept.num_computed == 3
    cache.free(kept)
    cache.check_refcounts()
    assert all(r == 0 for r in cache.blocks.ref)


def test_a_failed_batch_gives_back_what_it_reserved_and_later_work_is_served():
    eng = tiny_engine({"slm": 1}, num_blocks=8)
    key, cache, runner = eng.role("slm").key, eng.cache, eng.role("slm").runner
    compute, fail = runner.compute, [1]

    def flaky(batch, wants):  # e.g. a transient out-of-memory in the forward
        if fail.pop() if fail else 0:
            raise RuntimeError("out of memory (simulated)")
        return compute(batch, wants)
    runner.compute = flaky

    async def go():
        sched = Scheduler(eng)
        kept = cache.new_sequence(key, list(range(1, 34)))       # its caller keeps it to retry
        with pytest.raises(RuntimeError, match="simulated"):
            await sched.forward(kept)
        assert kept.block_table == [] and cache.blocks.num_free() == 8
        other = cache.new_sequence(key, list(range(100, 190)))   # 6 blocks
        await asyncio.wait_for(sched.forward(other), 10)
        await asyncio.wait_for(sched.forward(kept), 10)          # the retry works too
        sched.close()
        return kept, other

    kept, other = asyncio.run(go())
    assert kept.num_computed == 33 and other.last_computed == 90  # (other, idle, made room for the retry)
    cache.check_refcounts()


def test_costs_charge_what_was_computed_when_a_waiting_sequence_is_preempted():
    from gboost.cost import CostRecord
    eng = tiny_engine({"slm": 1}, num_blocks=8)
    key, cache, runner = eng.role("slm").key, eng.cache, eng.role("slm").runner

    async def go():
        sched = Scheduler(eng)
        llm = LocalLLM(eng, sched, role="slm")
        llm.cost = CostRecord()
        p = cache.new_sequence(key, list(range(1, 33)))
        await sched.forward(p)
        cache.fork(p)                                         # its 2 blocks are shared: not preemptible
        o = cache.new_sequence(key, list(range(40, 104)))     # older than the LLM session: 4 blocks
        ids = list(range(120, 168))
        await llm.next_logprobs(ids)                          # session of 48 tokens: 3 blocks
        t0 = runner.tokens_computed

        async def run_o():
            await sched.forward(o)
            cache.free(o)
        await asyncio.gather(run_o(), llm.next_logprobs(ids + [7]))  # the session waits, is preempted
        sched.close()
        return sched, llm, runner.tokens_computed - t0

    sched, llm, computed = asyncio.run(go())
    assert sched.preemptions >= 1 and sched.preempted_tokens == 48
    assert computed == 64 + 49                                # o, then the whole session again
    assert llm.cost.llm_tokens == 48 + 49 and llm.tokens_computed == 48 + 49
    assert llm.cost.prefix_cache_tokens == 0


def test_a_sequence_cut_back_while_its_batch_runs_is_not_committed_and_its_batch_mates_are():
    import time
    eng = tiny_engine({"slm": 1, "prm": 2}, num_blocks=64)
    cache, runner, key = eng.cache, eng.role("prm").runner, eng.role("prm").key
    compute = runner.compute

    def slow(batch, wants):
        time.sleep(0.3)
        return compute(batch, wants)
    runner.compute = slow

    async def go():
        sched = Scheduler(eng)
        prm = PRMScorer(eng, sched, PRMSpec(kind="judge", yes_token="Y"))
        a = cache.new_sequence(key, prm.root_ids("Q1: 1+1?") + prm.step_ids("1+1 = 2", first=True))
        b = cache.new_sequence(key, prm.root_ids("Q2: 2+2?") + prm.step_ids("2+2 = 4", first=True))
        ta, tb = asyncio.ensure_future(prm.score([a])), asyncio.ensure_future(prm.score([b]))
        await asyncio.sleep(0.15)                   # the batch is in the worker thread
        ta.cancel()                                  # A hangs up: its judge suffix is cut off at once
        res = await asyncio.gather(ta, tb, return_exceptions=True)
        sched.close()
        return a, b, res

    a, b, (ra, rb) = asyncio.run(go())
    assert isinstance(ra, asyncio.CancelledError) and isinstance(rb, list) and len(rb) == 1
    assert a.num_computed <= len(a.token_ids) and b.num_computed == len(b.token_ids)
    cache.check_refcounts()
