"""Collaboration costs (issue: the general LLM as an asynchronous collaborator).

1. An endpoint that adds 200 ms per call: N concurrent requests vs one (tiny models, so the
   network latency dominates). Run: python -m pytest benchmarks/test_collab.py -k latency -s
2. The demo pair (0.5B SLM drafting, 1.5B LLM verifying): LLM calls per collaborative step,
   acceptance rate and wall time per step, speculative vs token-by-token (exact).
   Run: python -m pytest benchmarks/test_collab.py -k demo -s   (minutes on a CPU)
"""
import asyncio
import time

import pytest

from gboost.llm.remote import RemoteLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.faults import FaultConfig
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import tiny_engine

V = 260


@pytest.fixture(scope="module")
def slow_endpoint():
    eng = tiny_engine({"slm": 2})
    app = create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny"), max_logprobs=V,
                     fault=FaultConfig(latency_s=0.2))
    with BackgroundServer(app) as srv:
        yield srv


def _solve_many(url, n):
    async def go():
        eng = tiny_engine({"slm": 1, "prm": 3})
        sched = Scheduler(eng)
        llm = RemoteLLM(url, top_logprobs=V, vocab_size=V, max_concurrency=64)
        cfg = SearchConfig(method="fusion", temperature=0.0, top_p=1.0, max_step_tokens=8, max_depth=2)
        be = EngineExecutor(eng, sched, cfg, llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair")),
                           options=CollabOptions(collab_mode="speculative", max_draft=8))
        t0 = time.perf_counter()
        res = await asyncio.gather(*(solve(f"question {i}", be, cfg) for i in range(n)))
        dt = time.perf_counter() - t0
        await llm.aclose()
        return dt, be.counts.llm_rounds, res
    return asyncio.run(go())


@pytest.mark.parametrize("n", [1, 8, 32])
def test_latency_bound_endpoint_concurrent_requests(benchmark, slow_endpoint, n):
    out = {}
    def run():
        out["r"] = _solve_many(slow_endpoint.url, n)
    benchmark.pedantic(run, rounds=1, iterations=1)
    dt, calls, res = out["r"]
    assert all(len(r.steps) == 2 for r in res)
    benchmark.extra_info.update({"requests": n, "llm_calls": calls, "seconds": round(dt, 3),
                                 "calls_per_request": calls / n})
    print(f"\n[collab-latency] {n} concurrent requests, 200 ms/call endpoint: {dt:.2f}s, "
          f"{calls} LLM calls ({calls / n:.1f}/request)")


QUESTION = ("A robe takes 2 bolts of blue fiber and half that much white fiber. "
            "How many bolts in total does it take?")


@pytest.mark.parametrize("mode", ["speculative", "exact"])
def test_demo_pair_collaborative_steps(benchmark, mode):
    from gboost.stack import build_stack
    out = {}

    async def go():
        cfg = SearchConfig(method="fusion", temperature=0.7, top_p=0.95, max_step_tokens=96, max_depth=4, seed=0,
                           score_baselines=False)
        stack = await build_stack(cfg, options=CollabOptions(collab_mode=mode, max_draft=16))
        try:
            be = stack.executor
            t0 = time.perf_counter()
            res = await solve(QUESTION, be, cfg)
            dt = time.perf_counter() - t0
        finally:
            await stack.aclose()
        steps = len(res.steps)
        toks = sum(len(n.token_ids) for n in res.chosen)
        out.update(mode=mode, steps=steps, tokens=toks, seconds=round(dt, 2),
                   llm_calls_per_step=round(be.counts.llm_rounds / steps, 2),
                   acceptance=round(be.counts.draft_accepted / be.counts.draft_proposed, 3) if be.counts.draft_proposed else None,
                   seconds_per_step=round(dt / steps, 2), tokens_per_llm_call=round(toks / be.counts.llm_rounds, 2))
    benchmark.pedantic(lambda: asyncio.run(go()), rounds=1, iterations=1)
    benchmark.extra_info.update(out)
    print(f"\n[collab-demo] {out}")
