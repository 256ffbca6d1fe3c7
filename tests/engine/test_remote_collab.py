"""The general LLM over real HTTP (gboost's own server on 127.0.0.1) inside collaborative steps."""
import asyncio

import pytest

from gboost.llm.base import LLMError
from gboost.llm.local import LocalLLM
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
def server():
    """The tiny 'general LLM' (seed 2) served over HTTP, with switchable faults."""
    eng = tiny_engine({"slm": 2})
    backend = EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny-llm")
    with BackgroundServer(create_app(backend, max_logprobs=V)) as srv:
        yield srv


def cfg(**kw):
    return SearchConfig(**{"max_step_tokens": 6, "max_depth": 2, "temperature": 0.0, "top_p": 1.0,
                           "method": "fusion", **kw})


async def fused_steps(llm_factory, mode, question="2+2=?"):
    eng = tiny_engine({"slm": 1, "prm": 3})
    sched = Scheduler(eng)
    llm = await llm_factory(eng, sched)
    be = EngineExecutor(eng, sched, cfg(), llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair")),
                       options=CollabOptions(collab_mode=mode, max_draft=3))
    try:
        res = await solve(question, be, cfg())
    finally:
        await llm.aclose()
    eng.cache.check_refcounts()
    assert all(r == 0 for r in eng.cache.blocks.ref)
    return [s["text"] for s in res.steps], res, be


@pytest.mark.parametrize("mode", ["exact", "speculative"])
def test_served_llm_gives_the_same_greedy_fused_tokens_as_local(server, mode):
    async def local(eng, sched):
        src = tiny_engine({"llm": 2})          # same weights as the served model
        return LocalLLM(src, Scheduler(src))

    async def remote(eng, sched):
        llm = RemoteLLM(server.url + "/v1", top_logprobs=V, timeout_s=10)
        await llm.check(V, [10, 20, 30])
        return llm
    a, _, _ = asyncio.run(fused_steps(local, mode))
    b, _, be = asyncio.run(fused_steps(remote, mode))
    assert a == b and len(a) == 2
    assert be.counts.llm_rounds > 0


def test_topk_endpoint_completes_with_union_support(server):
    async def remote(eng, sched):
        llm = RemoteLLM(server.url, top_logprobs=5, timeout_s=10)
        await llm.check(V, [10, 20, 30])
        return llm
    steps, res, _ = asyncio.run(fused_steps(remote, "speculative"))
    assert len(steps) == 2 and not res.cost.llm_faults


@pytest.mark.parametrize("fault,kind", [
    (FaultConfig(error_rate=1.0, status_code=503), "llm_http_5xx"),
    (FaultConfig(error_rate=1.0, status_code=429, retry_after=0), "llm_http_429"),
    (FaultConfig(malformed_rate=1.0), "llm_malformed"),
    (FaultConfig(latency_s=0.5), "llm_timeout"),
])
def test_faults_fall_back_to_slm_steps_and_are_counted(server, fault, kind):
    async def remote(eng, sched):
        llm = RemoteLLM(server.url, top_logprobs=V, timeout_s=0.2, max_retries=1, backoff_base_s=0.01,
                        vocab_size=V)
        return llm
    server.app.state.faults.configure(fault)
    try:
        steps, res, be = asyncio.run(fused_steps(remote, "speculative"))
    finally:
        server.app.state.faults.configure(FaultConfig())
    assert len(steps) == 2
    assert [s["action"] for s in res.steps] == ["collab", "collab"]
    assert res.cost.llm_faults.get(kind, 0) == 2 and be.cost.llm_faults.get(kind, 0) == 2


def test_fault_can_be_configured_to_fail_the_request(server):
    async def go():
        eng = tiny_engine({"slm": 1, "prm": 3})
        sched = Scheduler(eng)
        llm = RemoteLLM(server.url, top_logprobs=V, timeout_s=1, max_retries=0, vocab_size=V)
        be = EngineExecutor(eng, sched, cfg(), llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair")),
                           options=CollabOptions(on_llm_fault="fail"))
        try:
            with pytest.raises(LLMError) as e:
                await solve("1+1?", be, cfg())
        finally:
            await llm.aclose()
        assert e.value.kind == "http_5xx"
        eng.cache.check_refcounts()
        assert all(r == 0 for r in eng.cache.blocks.ref)
    server.app.state.faults.configure(FaultConfig(error_rate=1.0))
    try:
        asyncio.run(go())
    finally:
        server.app.state.faults.configure(FaultConfig())


def test_vocabulary_mismatch_is_refused_at_start_up(server):
    async def go():
        llm = RemoteLLM(server.url, top_logprobs=5)
        try:
            with pytest.raises(LLMError) as e:
                await llm.check(V + 1000, [10, 20])
        finally:
            await llm.aclose()
        return e.value.kind
    assert asyncio.run(go()) == "vocab_mismatch"


def test_slm_and_prm_work_goes_on_while_llm_calls_are_in_flight(server):
    """A slow endpoint must not stall the rest: SLM/PRM batches run while LLM requests wait."""
    async def go():
        eng = tiny_engine({"slm": 1, "prm": 3})
        sched = Scheduler(eng)
        llm = RemoteLLM(server.url, top_logprobs=V, vocab_size=V, timeout_s=10)
        inflight = {"n": 0}
        during = []
        orig_next, orig_score = llm.next_logprobs, llm.score

        async def counted(coro):
            inflight["n"] += 1
            try:
                return await coro
            finally:
                inflight["n"] -= 1
        llm.next_logprobs = lambda ids: counted(orig_next(ids))
        llm.score = lambda p, d: counted(orig_score(p, d))
        for key in eng.models:
            runner = eng.models[key].runner
            compute = runner.compute  # what the scheduler's worker thread runs
            def spy(batch, wants, compute=compute, key=key):
                during.append((key, inflight["n"] > 0))
                return compute(batch, wants)
            runner.compute = spy
        c = SearchConfig(method="gboost", num_simulations=2, max_step_tokens=6, max_depth=2, temperature=0.8)
        be = EngineExecutor(eng, sched, c, llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair")),
                           options=CollabOptions(collab_mode="exact"))
        try:
            # beside the gboost search, an SLM chain (PRM-scored steps, no LLM): two gboost requests
            # run in lockstep and score at the same moments, so they would test the timing, not this
            await asyncio.gather(solve("1+2?", be, c), solve("3+4?", be, c.replace(method="slm", max_depth=3)))
        finally:
            await llm.aclose()
        return during
    server.app.state.faults.configure(FaultConfig(latency_s=0.3))
    try:
        during = asyncio.run(go())
    finally:
        server.app.state.faults.configure(FaultConfig())
    slm_key, prm_key = "tiny-1", "tiny-3"
    assert sum(1 for k, busy in during if k == slm_key and busy) >= 3
    assert any(k == prm_key and busy for k, busy in during)
