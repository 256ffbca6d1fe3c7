"""A resident LLM charges what it computes, split into context read and positions scored."""
import asyncio

from gboost.cost import CostRecord
from gboost.llm.local import LocalLLM
from gboost.scheduler import Scheduler
from gboost.testing import tiny_engine


def test_context_tokens_are_what_the_llm_read_before_the_scored_rows():
    eng = tiny_engine({"slm": 1, "llm": 2})
    llm = LocalLLM(eng, Scheduler(eng))
    llm.cost = CostRecord()
    bs = eng.cache.block_size
    prefix = [(7 * i) % 200 + 3 for i in range(2 * bs + 5)]

    async def go():
        await llm.score(prefix, [11, 12, 13])  # cold: the whole prefix is context
        first = llm.cost.copy()
        # the next round keeps one draft token, adds the resampled one (40) and drafts 3 more: its
        # session holds everything up to the kept token, and 40's row is one of the rows asked for
        await llm.score(prefix + [11, 40], [41, 42, 43])
        second = llm.cost.minus(first)
        # a different continuation of the prefix, past one session: the prefix blocks are shared,
        # the tokens after the last full block are context read again
        await llm.next_logprobs(prefix[:bs + 3] + [99, 98])
        third = llm.cost.minus(first).minus(second)
        return first, second, third

    first, second, third = asyncio.run(go())
    assert (first.llm_tokens, first.llm_context_tokens) == (len(prefix) + 3, len(prefix) - 1)
    assert (second.llm_tokens, second.llm_context_tokens) == (4, 0)  # rows after 40, 41, 42, 43
    assert third.llm_tokens - third.llm_context_tokens == 1
    assert third.llm_context_tokens + third.prefix_cache_tokens == bs + 4
    llm.release_sessions()


def test_a_session_of_another_path_does_not_hide_this_paths_cached_prefix():
    eng = tiny_engine({"slm": 1, "llm": 2})
    llm = LocalLLM(eng, Scheduler(eng))
    llm.cost = CostRecord()
    bs = eng.cache.block_size
    shared = [5 + i for i in range(bs + bs // 2)]          # a system prompt: 1.5 blocks
    path_a = shared + [100 + i for i in range(3 * bs)]     # question A and its steps
    path_b = shared + [150 + i for i in range(3 * bs)]     # question B

    async def go():
        await llm.next_logprobs(path_a)
        await llm.next_logprobs(path_b)  # takes A's session (it shares more than one cached block)
        before = llm.cost.copy()
        # A's next call: B's session shares 1.5 blocks, the prefix cache holds A's 4 full blocks
        await llm.score(path_a + [7, 8], [9])
        return llm.cost.minus(before)

    got = asyncio.run(go())
    held = (len(path_a) // bs) * bs
    assert eng.cache.cached_prefix_len(llm.model.key, path_a + [7]) == held
    assert got.llm_tokens == len(path_a) + 3 - held
    assert got.prefix_cache_tokens == held
    llm.release_sessions()
    assert eng.cache.cached_prefix_len(llm.model.key, [1]) == 0  # a one-token sequence takes nothing
