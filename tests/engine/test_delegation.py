"""Delegated steps end to end: a mock hosted chat-only API (tests/mock_chat_api.py, in front of
gboost's chat route on a tiny model) as the general LLM of G-Boost, rsd and llm; budgets that
count what the API billed; faults retried, fallen back from or failed on, as configured."""
import asyncio

import httpx
import pytest

from gboost.collab.delegated_step import delegate_messages
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.llm.base import LLMError
from gboost.llm.chat import ChatLLM
from gboost.llm.endpoints import EndpointKindError
from mock_chat_api import ChatOnlyAPI
from gboost.scheduler import Scheduler
from gboost.search.api import solve
from gboost.search.config import ConfigError, SearchConfig
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import CHAT_TEMPLATE, tiny_engine, write_tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

QUESTION = "What is 2+3?"


@pytest.fixture(scope="module")
def api():
    """The tiny 'general LLM' (seed 2) behind a chat-only API; tests set ``api.faults``."""
    eng = tiny_engine({"slm": 2}, chat_template=CHAT_TEMPLATE)
    mock = ChatOnlyAPI(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny-llm")),
                       model="mock-chat")
    with BackgroundServer(mock) as srv:
        srv.mock = mock
        yield srv


@pytest.fixture
def fresh(api):
    api.mock.faults, api.mock.retry_after, api.mock.calls = (), 0.0, 0
    api.mock.injected.clear()
    api.mock.billed.clear()
    return api


async def no_sleep(_):
    await asyncio.sleep(0)


def writer(url, **kw):
    return ChatLLM(url + "/v1", model="mock-chat", timeout_s=30, sleep=no_sleep, **kw)


def cfg(**kw):
    base = dict(method="gboost", slm_width=1, collab_width=0, delegate_width=1, num_simulations=4, max_depth=3,
                max_step_tokens=6, temperature=0.0, top_p=1.0)
    return SearchConfig(**{**base, **kw})


def run_solve(llm, c, on_fault="fallback"):
    async def main():
        eng = tiny_engine({"slm": 1, "prm": 3})
        sched = Scheduler(eng)
        ex = EngineExecutor(eng, sched, c, writer=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair", yes_token="Y")),
                            options=CollabOptions(on_llm_fault=on_fault))
        try:
            res = await solve(QUESTION, ex, c)
        finally:
            await llm.aclose()
            sched.close()
        assert eng.cache.live == {} and all(r == 0 for r in eng.cache.blocks.ref)  # every KV block back
        return res
    return asyncio.run(main())


def nodes(res):
    return [n for n in res.root.iter_nodes() if not n.is_root]


def test_gboost_grows_slm_and_delegated_children_and_counts_what_was_billed(fresh):
    fresh.mock.faults = (None, 429, None, 503)  # every other call fails once, then is retried
    res = run_solve(writer(fresh.url, max_retries=3), cfg())
    delegated = res.stats["expansions"]["delegate"]
    assert delegated >= 2 and res.stats["expansions"]["slm"] >= 2
    assert fresh.mock.injected[429] >= 1 and fresh.mock.injected[503] >= 1 and not res.cost.llm_faults
    assert res.cost.llm_calls == delegated == fresh.mock.calls - sum(fresh.mock.injected.values())
    # the budgets' record holds the prompt and completion tokens the API billed, nothing else
    assert res.cost.llm_tokens == fresh.mock.billed["prompt_tokens"] + fresh.mock.billed["completion_tokens"] > 0
    assert res.cost.llm_retries == sum(fresh.mock.injected.values())


def test_a_delegated_step_is_the_llms_reply_to_the_fixed_instruction(fresh):
    async def reply():
        async with writer(fresh.url) as llm:
            return await llm.write(delegate_messages(QUESTION, [], "\n\n"), max_tokens=6, stop=["\n\n"],
                                   temperature=0.0)
    want = asyncio.run(reply()).text.split("\n\n")[0].strip()
    assert want, "the tiny LLM wrote an empty first step: pick another question"
    res = run_solve(writer(fresh.url), cfg(method="llm", max_depth=1))
    assert [s["action"] for s in res.steps] == ["llm"] and res.steps[0]["text"] == want


def test_rsd_and_llm_delegate_every_llm_step_on_a_chat_only_api(fresh):
    res = run_solve(writer(fresh.url), cfg(method="rsd", rsd_threshold=1.0, max_depth=2))
    assert res.stats["rsd_regenerated"] == len(res.steps) == 2 and {s["action"] for s in res.steps} == {"llm"}
    assert res.cost.llm_calls == 2 and fresh.mock.calls == 2
    res = run_solve(writer(fresh.url), cfg(method="llm", max_depth=2))
    assert [s["action"] for s in res.steps] == ["llm", "llm"] and fresh.mock.calls == 4


@pytest.mark.parametrize("budget", [{"max_llm_calls": 2}, {"max_llm_tokens": 1}])
def test_budgets_stop_delegation_at_the_cap(fresh, budget):
    res = run_solve(writer(fresh.url), cfg(num_simulations=6, **budget))
    want = budget.get("max_llm_calls", 1)  # a token cap of 1: one call, asked for one token
    assert res.stats["expansions"]["delegate"] == want == res.cost.llm_calls == fresh.mock.calls
    if "max_llm_tokens" in budget:  # the reply's completion, its prompt counted apart
        assert res.cost.llm_generated_tokens == fresh.mock.billed["completion_tokens"] == 1
    assert res.stats["expansions"]["slm"] >= 3  # the search went on with the SLM alone


def test_persistent_faults_fall_back_to_the_slm_or_fail_as_configured(fresh):
    fresh.mock.faults = (503,)
    res = run_solve(writer(fresh.url, max_retries=1), cfg(max_llm_faults=2))
    assert res.cost.llm_faults == {"llm_http_5xx": 2}  # then the LLM is not asked again
    assert res.answer is not None or res.steps  # the SLM wrote the steps instead
    assert all(n.action != "delegate" or n.fault == "llm_http_5xx" for n in nodes(res))
    with pytest.raises(LLMError) as e:
        run_solve(writer(fresh.url, max_retries=1), cfg(), on_fault="fail")
    assert e.value.kind == "http_5xx" and e.value.attempts == 2


def test_an_empty_reply_is_a_fault():
    def handler(request):
        return httpx.Response(200, json={"choices": [{"message": {"role": "assistant", "content": "  "},
                                                      "finish_reason": "stop"}],
                                         "usage": {"prompt_tokens": 50, "completion_tokens": 1}})
    llm = ChatLLM("http://x.invalid/v1", model="m", transport=httpx.MockTransport(handler))
    res = run_solve(llm, cfg(method="llm", max_depth=1))
    assert res.cost.llm_faults == {"llm_malformed": 1} and res.steps[0]["action"] == "llm"
    assert res.cost.llm_tokens == 51  # billed, though refused


def test_a_chat_only_stack_refuses_fused_steps_and_says_why(fresh, tmp_path):
    ex = EngineExecutor(*(lambda e: (e, Scheduler(e)))(tiny_engine({"slm": 1})), cfg(), writer=object())
    for c in (cfg(collab_width=1), cfg(method="fusion")):
        with pytest.raises(ConfigError, match="chat-only"):
            ex.check_config(c)
    with pytest.raises(ValueError, match="chat-only"):
        asyncio.run(ex.expand(None, "collab", 1))

    from gboost.stack import build_stack
    slm = write_tiny_checkpoint(tmp_path / "slm", seed=1)

    async def stack(c):
        st = await build_stack(c, slm=str(slm), llm=fresh.url + "/v1", prm="none", dtype="float32",
                               kv_memory_gb=0.05, llm_model="mock-chat")
        await st.aclose()
        return st
    st = asyncio.run(stack(cfg()))
    assert st.llm is None and isinstance(st.writer, ChatLLM) and st.executor.writer is st.writer
    with pytest.raises(EndpointKindError, match=r"fused steps .* offers chat \(completions: .*404.*delegate_width=1"):
        asyncio.run(stack(cfg(collab_width=1)))


def test_gboost_serve_solve_on_a_chat_only_llm(fresh):
    """/v1/solve on a stack whose general LLM is the chat-only API: delegated steps, a fused
    config refused with a 400 that says why, the API's calls in /metrics."""
    from gboost.server.solve import Solver
    c = cfg(num_simulations=3)
    eng = tiny_engine({"slm": 1, "prm": 3})
    sched = Scheduler(eng)
    llm = writer(fresh.url)
    ex = EngineExecutor(eng, sched, c, writer=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair", yes_token="Y")))
    app = create_app(EngineCompletionBackend(eng, sched, model_name="tiny"), solver=Solver(ex, c))
    try:  # the client lives on the server's loop: it ends with it
        with BackgroundServer(app) as srv:
            r = httpx.post(srv.url + "/v1/solve", json={"question": QUESTION, "method": "rsd",
                                                        "config": {"rsd_threshold": 1.0, "max_depth": 2}}, timeout=120)
            assert r.status_code == 200, r.text
            assert [s["action"] for s in r.json()["steps"]] == ["llm", "llm"] and r.json()["cost"]["llm_calls"] == 2
            r = httpx.post(srv.url + "/v1/solve", json={"question": QUESTION, "method": "fusion"}, timeout=60)
            assert r.status_code == 400 and "chat-only" in r.json()["error"]["message"]
            metrics = httpx.get(srv.url + "/metrics").text
            assert "gboost_llm_requests_total 2" in metrics
        assert eng.cache.live == {} and all(r == 0 for r in eng.cache.blocks.ref)
    finally:
        sched.close()


def test_on_a_resident_llm_a_delegated_step_is_the_llms_own_step():
    """delegate_width on a resident general LLM: the child is the step the LLM writes alone (action
    `llm`), token for token what the llm chain writes at temperature 0; no chat writer is needed."""
    from gboost.testing import tiny_stack

    def steps(c):
        st = tiny_stack(c)
        try:
            res = asyncio.run(solve(QUESTION, st.executor, c))
        finally:
            st.scheduler.close()
        assert st.engine.cache.live == {} and all(r == 0 for r in st.engine.cache.blocks.ref)
        return res

    chain = steps(cfg(method="llm", max_depth=2))
    tree = steps(cfg(slm_width=0, num_simulations=2, max_depth=2))
    assert [s["action"] for s in tree.steps] == ["delegate", "delegate"]
    assert [s["text"] for s in tree.steps] == [s["text"] for s in chain.steps] and chain.steps[0]["text"]
    assert tree.cost.llm_calls == 2 and tree.cost.llm_tokens > 0
    # with no general LLM at all the config is refused before anything runs
    st = tiny_stack(llm=False)
    try:
        with pytest.raises(ConfigError, match="delegate_width > 0 needs a general LLM"):
            asyncio.run(solve(QUESTION, st.executor, cfg()))
    finally:
        st.scheduler.close()
    assert st.engine.cache.live == {}
