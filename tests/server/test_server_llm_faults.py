"""Faults a retry hides stay visible: /v1/solve against a general LLM endpoint that injects errors.

Both servers run in this process on 127.0.0.1: the tiny "general LLM" (``gboost serve --model``
with ``--fault-error-rate``) and the solve stack that calls it through RemoteLLM.
"""
import httpx
import pytest

from gboost.llm.remote import RemoteLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.config import SearchConfig
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.faults import FaultConfig
from gboost.server.uvicorn_server import BackgroundServer
from gboost.server.solve import Solver
from gboost.testing import tiny_engine

pytestmark = pytest.mark.timeout(180)

V = 260


def metrics(url: str) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_retried_llm_faults_show_in_metrics_and_in_each_requests_cost():
    llm_eng = tiny_engine({"slm": 2})
    llm_app = create_app(EngineCompletionBackend(llm_eng, Scheduler(llm_eng), model_name="tiny-llm"),
                         fault=FaultConfig(error_rate=0.3, seed=3), max_logprobs=V)

    async def no_sleep(_s):  # back-off without waiting
        return None

    with BackgroundServer(llm_app) as llm_srv:
        eng = tiny_engine({"slm": 1, "prm": 3})
        sched = Scheduler(eng)
        llm = RemoteLLM(llm_srv.url, top_logprobs=V, timeout_s=10, max_retries=2, vocab_size=V, sleep=no_sleep)
        cfg = SearchConfig(method="fusion", max_step_tokens=6, max_depth=3, temperature=0.0, top_p=1.0)
        be = EngineExecutor(eng, sched, cfg, llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair")),
                           options=CollabOptions(max_draft=3))
        app = create_app(EngineCompletionBackend(eng, sched, model_name="tiny"), solver=Solver(be, cfg))
        with BackgroundServer(app) as srv:
            costs = []
            for i in range(8):
                r = httpx.post(srv.url + "/v1/solve", json={"question": f"What is {i} + 1?"}, timeout=60)
                assert r.status_code == 200, r.text
                costs.append(r.json()["cost"])
            m = metrics(srv.url)
        injected = llm_app.state.faults.injected["http_503"]
        retried, failed = llm.retries_by_kind["http_5xx"], llm.errors_by_kind["http_5xx"]
        assert retried > 0, "the endpoint injected nothing: the test proves nothing"
        # every injected 503 is seen exactly once: retried, or the last attempt of a failed call
        assert retried + failed == injected
        assert m['gboost_llm_retries_total{kind="http_5xx"}'] == retried
        assert m['gboost_llm_errors_total{kind="http_5xx"}'] == failed
        assert m["gboost_llm_requests_total"] == llm.stats["requests"] > 0
        # per request: each solve's cost says how many retries it needed, and they add up
        assert sum(c["llm_retries"] for c in costs) == retried
        assert sum(c["llm_faults"].get("llm_http_5xx", 0) for c in costs) == failed
        assert m.get('gboost_llm_fallbacks_total{kind="llm_http_5xx"}', 0) == failed
        eng.cache.check_refcounts()
        assert eng.cache.live == {}
