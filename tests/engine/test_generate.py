"""Engine.generate is agenerate for each prompt on a scheduler of its own: the same tokens, whether
called from plain code or from a coroutine (a synchronous helper of async code), blocks released."""
import asyncio

from gboost.sampling import SamplingParams
from gboost.scheduler import Scheduler
from gboost.testing import tiny_engine

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


def test_inline_scheduler_runs_forwards_on_the_loop_thread_with_the_same_tokens():
    """offload=False (Engine.generate, one-caller CLIs) computes on the event loop's own thread;
    the default hands every forward to the worker thread. Tokens and failures are the same."""
    import threading
    eng = tiny_engine({"slm": 1}, num_blocks=64)
    runner = eng.role("slm").runner
    seen = []
    compute = runner.compute
    runner.compute = lambda *a: (seen.append(threading.current_thread()), compute(*a))[1]

    async def run(offload):
        sched = Scheduler(eng, offload=offload)
        try:
            outs = await asyncio.gather(*[eng.agenerate(sched, p, sp) for p, sp in zip(PROMPTS, PARAMS)])
            loop_thread = threading.current_thread()
            return [(o.token_ids, o.finish_reason) for o in outs], {t is loop_thread for t in seen}
        finally:
            sched.close()
            seen.clear()

    inline, on_loop = asyncio.run(run(False))
    offloaded, on_loop_offloaded = asyncio.run(run(True))
    assert inline == offloaded and on_loop == {True} and on_loop_offloaded == {False}
    assert eng.cache.live == {}

    def broken(*a):
        raise RuntimeError("forward failed")

    async def failing_then_fine():  # a failing forward fails its batch's callers; the loop lives on
        sched = Scheduler(eng, offload=False)
        try:
            runner.compute = broken
            failed = await asyncio.gather(*[eng.agenerate(sched, p, PARAMS[0]) for p in PROMPTS[:2]],
                                          return_exceptions=True)
            runner.compute = compute
            return failed, await eng.agenerate(sched, PROMPTS[0], PARAMS[0])
        finally:
            sched.close()
    failed, fine = asyncio.run(failing_then_fine())
    assert all(isinstance(e, RuntimeError) for e in failed) and fine.token_ids == inline[0][0]
    assert eng.cache.live == {}
    eng.cache.check_refcounts()
