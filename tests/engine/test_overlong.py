"""Work that cannot run fails alone, before it holds anything: over-long sequences in a shared batch,
over-long root prompts, a child whose PRM step cannot be built."""
import asyncio

import pytest
import torch

from gboost.positions import PromptTooLong
from gboost.scheduler import Scheduler
from gboost.search.config import SearchConfig
from gboost.testing import tiny_config, tiny_engine, tiny_stack


def test_an_overlong_sequence_fails_alone_not_its_batch_mates():
    """One request's sequence past the model's positions (a PRM prompt grown by steps, say) must not
    fail the other requests' work that shares its forward batch."""
    eng = tiny_engine({"slm": 1}, num_blocks=64, configs={"slm": tiny_config(max_positions=64)})
    sched = Scheduler(eng)
    ok = eng.cache.new_sequence("tiny-1", list(range(10)))
    long = eng.cache.new_sequence("tiny-1", list(range(70)))

    async def go():
        return await asyncio.gather(sched.forward(ok), sched.forward(long), return_exceptions=True)

    a, b = asyncio.run(go())
    assert isinstance(a, torch.Tensor) and a.shape == (260,)
    assert isinstance(b, PromptTooLong) and "70 tokens" in str(b)
    assert long.block_table == [] and long.num_computed == 0   # nothing reserved for it
    for s in (ok, long):
        eng.cache.free(s)
    eng.cache.check_refcounts()
    assert eng.cache.blocks.num_free() == 64


@pytest.mark.parametrize("role, positions", [("slm", 40), ("prm", 40)])
def test_an_overlong_root_prompt_is_refused_before_any_sequence_exists(role, positions):
    stack = tiny_stack(configs={role: tiny_config(max_positions=positions)}, num_blocks=64)
    be, cache = stack.executor, stack.engine.cache
    with pytest.raises(PromptTooLong, match="more than the 40 positions"):
        asyncio.run(be.root("x" * 60))
    assert cache.live == {} and be.counts.live_states == 0
    cache.check_refcounts()


def test_a_child_that_fails_after_its_step_frees_its_sequences(monkeypatch):
    stack = tiny_stack(SearchConfig(max_step_tokens=4, max_depth=3), num_blocks=64)
    be, cache = stack.executor, stack.engine.cache

    def broken(text, first):
        raise RuntimeError("tokenizer broke")

    async def go():
        root = await be.root("2+2?")
        monkeypatch.setattr(be.prm, "step_ids", broken)
        with pytest.raises(RuntimeError, match="tokenizer broke"):
            await be.expand(root, "slm", 2)
        assert set(cache.live) == {root.slm.seq_id, root.prm.seq_id}   # the children's are gone
        be.release(root)

    asyncio.run(go())
    assert cache.live == {} and be.counts.live_states == 0
    cache.check_refcounts()
