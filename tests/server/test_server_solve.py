"""POST /v1/solve over real HTTP: JSON and SSE replies, bad bodies, errors, disconnects.

The search runs on the model-free ToyExecutor (strict ledger of live states), the completions
routes on the FakeBackend; the server is uvicorn in a thread on 127.0.0.1.
"""
import asyncio
import json
import time

import httpx
import pytest

from _fake_backend import FakeBackend
from gboost.kv.block_pool import KVPoolExhausted
from gboost.positions import PromptTooLong
from gboost.search.api import solve
from toy_executor import ToyExecutor
from gboost.search.config import SearchConfig
from gboost.server.solve import Solver

pytestmark = pytest.mark.timeout(60)

Q = "What is 3 + 4?"


def chain_step(q, steps, action, i):
    d = len(steps) + 1
    return f"{action}{i} step {d}: The answer is {d + 4}." if d == 4 else f"{action}{i} step {d}"


@pytest.fixture
def solve_server(make_server):
    def make_solve(toy=None, cfg=None, **kw):
        toy = toy or ToyExecutor()
        solver = Solver(toy, cfg or SearchConfig(num_simulations=6))
        srv = make_server(FakeBackend(), solver=solver, **kw)
        srv.toy, srv.solver = toy, solver
        return srv
    return make_solve


def post(srv, body, **kw):
    return httpx.post(srv.url + "/v1/solve", json=body, timeout=20, **kw)


def sse_events(text):
    out = []
    for block in text.split("\n\n"):
        if block.strip():
            assert block.startswith("data: "), block
            data = block[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def wait_until(pred, timeout=10.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        time.sleep(0.02)
    return pred()


def test_json_reply_equals_a_direct_solve(solve_server):
    srv = solve_server()
    r = post(srv, {"question": Q, "seed": 3, "config": {"num_simulations": 5}})
    assert r.status_code == 200, r.text
    got = r.json()
    want = asyncio.run(solve(Q, ToyExecutor(), SearchConfig(num_simulations=5, seed=3)))
    assert got["object"] == "solve.result" and got["method"] == "gboost"
    assert got["answer"] == want.answer == "7"
    assert got["steps"] == want.steps and got["text"] == want.text
    assert set(got["cost"]) >= {"slm_tokens", "llm_tokens", "prm_tokens", "llm_calls", "wall_s"}
    assert "tree" not in got
    assert not srv.toy.live and srv.toy.n_released == srv.toy.n_created > 1


def test_method_and_tree_options(solve_server):
    srv = solve_server(ToyExecutor(chain_step))
    r = post(srv, {"question": Q, "method": "fusion", "include_tree": True})
    assert r.status_code == 200, r.text
    got = r.json()
    assert got["method"] == "fusion" and [s["action"] for s in got["steps"]] == ["collab"] * 4
    assert got["tree"]["chosen"] and len(got["tree"]["chosen"]) == 4


def test_stream_sends_each_step_then_the_result_then_done(solve_server):
    srv = solve_server(ToyExecutor(chain_step))
    with httpx.stream("POST", srv.url + "/v1/solve", json={"question": Q, "method": "slm", "stream": True},
                      timeout=20) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.read().decode())
    assert events[-1] == "[DONE]"
    steps, result = events[:-2], events[-2]
    assert [e["object"] for e in steps] == ["solve.step"] * 4
    assert [e["index"] for e in steps] == [0, 1, 2, 3]
    assert result["object"] == "solve.result" and result["answer"] == "8"
    assert [{k: e[k] for k in ("text", "action", "reward")} for e in steps] == result["steps"]
    assert not srv.toy.live


def test_stream_steps_arrive_before_the_search_ends(solve_server):
    # each chain step takes 0.3 s: the first event must come long before the 4-step solve ends
    srv = solve_server(ToyExecutor(chain_step, latency_s=0.3))
    t0 = time.monotonic()
    with httpx.stream("POST", srv.url + "/v1/solve", json={"question": Q, "method": "slm", "stream": True},
                      timeout=20) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        t_first = time.monotonic() - t0
        rest = [line for line in lines if line.startswith("data: ")]
        t_all = time.monotonic() - t0
    assert json.loads(first[6:])["index"] == 0
    assert rest[-1] == "data: [DONE]"
    assert t_first < t_all - 0.5


@pytest.mark.parametrize("body, needle", [
    ({}, "question: field required"),
    ({"question": ""}, "question"),
    ({"question": 7}, "question"),
    ({"question": Q, "temperature": 0.5}, "temperature"),            # unknown top-level key
    ({"question": Q, "method": "nope"}, "method='nope'"),
    ({"question": Q, "config": {"num_simulation": 3}}, "did you mean 'num_simulations'"),
    ({"question": Q, "config": {"uct_c": -1}}, "uct_c"),
    ({"question": Q, "config": "fast"}, "config"),
    ({"question": Q, "stream": "yes please"}, "stream"),
])
def test_bad_bodies_get_a_clear_400(solve_server, body, needle):
    srv = solve_server()
    r = post(srv, body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert needle in err["message"], err["message"]
    assert "Traceback" not in r.text
    assert srv.toy.n_created == 0


def test_malformed_json_and_non_object(solve_server):
    srv = solve_server()
    r = httpx.post(srv.url + "/v1/solve", content=b'{"question": ', timeout=10,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]["message"]
    r = httpx.post(srv.url + "/v1/solve", json=["a"], timeout=10)
    assert r.status_code == 400 and "JSON object" in r.json()["error"]["message"]


class Failing(ToyExecutor):
    """Raises ``exc`` from the n-th score call (1-based), after states exist."""

    def __init__(self, exc, at=1, **kw):
        super().__init__(chain_step, **kw)
        self.exc, self.at, self.n = exc, at, 0

    async def score(self, states):
        self.n += 1
        if self.n == self.at:
            raise self.exc
        return await super().score(states)


@pytest.mark.parametrize("exc, status, code", [
    (KVPoolExhausted("all 64 KV blocks are in use"), 503, "kv_pool_exhausted"),
    (PromptTooLong("sequence of 40000 tokens exceeds the model's 32768"), 400, "question_too_long"),
    (RuntimeError("secret internal detail"), 500, None),
])
def test_search_errors_map_to_status_and_release_everything(solve_server, exc, status, code):
    srv = solve_server(Failing(exc, at=2))
    r = post(srv, {"question": Q, "method": "slm"})
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["code"] == code
    assert "secret" not in r.text
    if status == 503:
        assert r.headers["retry-after"] == "1"
    assert srv.toy.n_created > 1 and not srv.toy.live
    # the server keeps serving: the next request (score calls past the failing one) succeeds
    assert post(srv, {"question": Q, "method": "slm"}).status_code == 200


def test_stream_error_after_steps_is_an_event_then_done(solve_server):
    srv = solve_server(Failing(KVPoolExhausted("all 64 KV blocks are in use"), at=3))
    r = post(srv, {"question": Q, "method": "slm", "stream": True})
    assert r.status_code == 200
    events = sse_events(r.text)
    assert [e["object"] for e in events[:2]] == ["solve.step", "solve.step"]
    assert events[2]["error"]["code"] == "kv_pool_exhausted"
    assert events[3] == "[DONE]"
    assert not srv.toy.live


def test_client_disconnect_cancels_the_search_and_releases_states(solve_server):
    toy = ToyExecutor(lambda q, steps, a, i: f"{a}{i} step {len(steps) + 1}", latency_s=0.5, max_depth=50)
    srv = solve_server(toy, SearchConfig(num_simulations=6, max_depth=50))
    with httpx.stream("POST", srv.url + "/v1/solve", json={"question": Q, "method": "slm", "stream": True},
                      timeout=20) as r:
        lines = r.iter_lines()  # held: a dropped iterator closes the stream early
        first = next(line for line in lines if line.startswith("data: "))
        assert json.loads(first[6:])["object"] == "solve.step"
        assert toy.live
    # the stream is closed after one of ~50 steps: the search must stop and hand back its states
    assert wait_until(lambda: not toy.live and srv.solver.in_flight == 0), (len(toy.live), srv.solver.in_flight)
    n = toy.n_created
    time.sleep(1.2)
    assert toy.n_created == n and srv.solver.solves == 0


def test_auth_and_metrics(solve_server):
    srv = solve_server(api_key="k-123")
    assert post(srv, {"question": Q}).status_code == 401
    assert post(srv, {"question": Q}, headers={"Authorization": "Bearer k-123"}).status_code == 200
    text = httpx.get(srv.url + "/metrics").text
    assert "gboost_solves_total 1" in text and "gboost_solves_in_flight 0" in text
    assert 'gboost_requests_total{path="/v1/solve"} 2' in text


def test_no_solver_no_route(make_server):
    srv = make_server()
    assert httpx.post(srv.url + "/v1/solve", json={"question": Q}, timeout=10).status_code == 404


@pytest.mark.parametrize("config, needle", [
    ({"num_simulations": 1000}, "num_simulations=1000 exceeds this server's limit of 6"),
    ({"max_llm_calls": None, "method": "fusion"}, "max_llm_calls=None exceeds this server's limit of 4"),
    ({"max_llm_calls": 9}, "exceeds this server's limit"),
    ({"answer_pattern": "(a+)+$"}, "answer_pattern is fixed by the server"),
    ({"step_delimiter": "\n"}, "step_delimiter is fixed by the server"),
])
def test_a_request_cannot_raise_the_servers_limits(solve_server, config, needle):
    srv = solve_server(cfg=SearchConfig(num_simulations=6, max_llm_calls=4))
    r = post(srv, {"question": Q, "config": config})
    assert r.status_code == 400 and needle in r.json()["error"]["message"], r.text
    assert srv.toy.n_created == 0
    lower = post(srv, {"question": Q, "config": {"num_simulations": 2, "max_llm_calls": 1}})
    assert lower.status_code == 200, lower.text


class NoLLM(ToyExecutor):
    """A stack without a general LLM: what it cannot run is refused before any state exists."""
    from gboost.collab.executor import EngineExecutor
    check_config = EngineExecutor.check_config
    llm = base = writer = None


@pytest.mark.parametrize("body, ok", [({"method": "fusion"}, False), ({"method": "slm"}, True),
                                      ({"config": {"collab_width": 0}}, True), ({}, False),
                                      ({"config": {"fusion_rule": "proxy"}, "method": "slm"}, True),  # never fuses
                                      ({"config": {"fusion_rule": "proxy", "collab_width": 0}}, True)])
def test_configs_the_stack_cannot_run_are_400(solve_server, body, ok):
    srv = solve_server(NoLLM(chain_step))
    r = post(srv, {"question": Q, **body})
    assert r.status_code == (200 if ok else 400), r.text
    if not ok:
        assert srv.toy.n_created == 0 and "invalid config" in r.json()["error"]["message"]


def test_a_stream_that_fails_before_its_first_step_gets_the_errors_status(solve_server):
    srv = solve_server(Failing(KVPoolExhausted("all 64 KV blocks are in use"), at=1))
    r = post(srv, {"question": Q, "method": "slm", "stream": True})
    assert r.status_code == 503 and r.json()["error"]["code"] == "kv_pool_exhausted"
    assert r.headers["retry-after"] == "1" and not srv.toy.live


@pytest.mark.parametrize("stream", [False, True])
def test_a_client_that_times_out_cancels_a_silent_search(solve_server, stream):
    """Non-streamed requests, and gboost streams (no event until the search has chosen), send
    nothing for a long time: a client that gives up must still stop the search."""
    toy = ToyExecutor(lambda q, steps, a, i: f"{a}{i} step {len(steps) + 1}", latency_s=0.3, max_depth=40)
    srv = solve_server(toy, SearchConfig(num_simulations=30, max_depth=40))
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(srv.url + "/v1/solve", json={"question": Q, "stream": stream}, timeout=1.0)
    assert wait_until(lambda: not toy.live and srv.solver.in_flight == 0), (len(toy.live), srv.solver.in_flight)
    n = toy.n_created
    time.sleep(0.8)
    assert toy.n_created == n and srv.solver.solves == 0
