"""Engine.generate is agenerate for each prompt on a scheduler of its own: the same tokens, whether
called from plain code or from a coroutine (a synchronous helper of async code), blocks released."""
import asyncio

from engine.sampling import SamplingParams
from engine.scheduler import Scheduler
from engine.testing import tiny_engine

PROMPTS = [[1, 2, 3, 4], [9, 8, 7], list(range(20, 45))]
PARAMS = [SamplingParams(temperature=0.0, max_tokens=6), SamplingParams(temperature=0.9, top_p=0.9, max_tokens=8, seed=5),
          SamplingParams(temperature=0.7, top_k=20, max_tokens=5, seed=11)]


def test_generate_gives_agenerate_tokens_from_plain_code_and_from_a_coroutine():
    eng = tiny_engine({"slm": 1}, num_blocks=64)

    async def one_by_one():
        sched = Scheduler(eng)
        try:
            return [await eng.agenerate(sched, p, sp) for p, sp in zip(PROMPTS, PARAMS)]
        finally:
            sched.close()

    async def inside_a_coroutine():
        return eng.generate(PROMPTS, PARAMS)

    want = [(o.token_ids, o.finish_reason) for o in asyncio.run(one_by_one())]
    assert [(o.token_ids, o.finish_reason) for o in eng.generate(PROMPTS, PARAMS)] == want
    assert [(o.token_ids, o.finish_reason) for o in asyncio.run(inside_a_coroutine())] == want
    assert eng.cache.live == {}
    eng.cache.check_refcounts()
