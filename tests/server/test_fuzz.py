"""Schema-driven fuzzing of the HTTP API on tiny models: `gboost serve --solve` and `gboost serve`.

Bodies come from the app's own OpenAPI schema (Schemathesis strategies: schema-valid and
schema-violating ones) and from hostile-JSON strategies (deep nesting, digit-limit integers,
NaN/Infinity, bad UTF-8, bodies that are not objects). The servers run uvicorn on 127.0.0.1 in
this process, so every answer is checked from outside and the KV pool from inside:
  * never a 5xx (nor a 500 sent in-band on a stream);
  * every 4xx in the documented error shape, and a status the schema documents;
  * a schema-violating body is refused (4xx);
  * the server stays alive, and after each answer every KV block is free again.
The default suite runs a short pass; ``-m fuzz_long`` runs many more examples.
"""
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gboost.search.config import SearchConfig
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.uvicorn_server import BackgroundServer
from gboost.scheduler import Scheduler
from gboost.testing import CHAT_TEMPLATE, tiny_app, tiny_config, tiny_engine, tiny_stack

schemathesis = pytest.importorskip("schemathesis")

pytestmark = pytest.mark.timeout(900)

QUICK, LONG = 8, 300  # examples per (operation, mode)

# a small search: fuzzed requests may lower these, never raise them
CFG = SearchConfig(num_simulations=2, max_depth=2, max_step_tokens=4, slm_width=2, collab_width=1, beam_width=2,
                   bon_n=2, max_llm_calls=4)


def _solve_server():
    stack = tiny_stack(CFG, num_blocks=512, configs={r: tiny_config(max_positions=128) for r in ("slm", "llm", "prm")})
    srv = BackgroundServer(tiny_app(stack, max_logprobs=8)).start()
    srv.cache = stack.engine.cache
    return srv


def _completions_server():
    eng = tiny_engine({"slm": 1}, num_blocks=512, configs={"slm": tiny_config(max_positions=64)},
                      chat_template=CHAT_TEMPLATE)  # /v1/chat/completions is fuzzed for real
    srv = BackgroundServer(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny"),
                                      max_logprobs=8)).start()
    srv.cache = eng.cache
    return srv


@pytest.fixture(scope="module", params=["serve --solve", "serve --model"])
def served(request):
    srv = _solve_server() if request.param == "serve --solve" else _completions_server()
    srv.schema = httpx.get(srv.url + "/openapi.json").json()
    srv.api = schemathesis.openapi.from_dict(srv.schema)
    yield srv
    srv.stop()


def settle_and_check(srv) -> None:
    """Alive, and every KV block free again. A stream's last cleanup may run just after its last
    byte was sent, so this waits for it (generously: no timing is asserted)."""
    assert httpx.get(srv.url + "/health", timeout=30).status_code == 200
    cache = srv.cache
    end = time.monotonic() + 30
    while (cache.live or cache.blocks.num_free() != cache.blocks.num_blocks) and time.monotonic() < end:
        time.sleep(0.01)
    assert cache.live == {}, f"{len(cache.live)} sequences live after the answer"
    assert cache.blocks.num_free() == cache.blocks.num_blocks
    cache.check_refcounts()


def check_answer(r: httpx.Response, documented: set[int], negative: bool, what) -> None:
    assert r.status_code < 500, (r.status_code, r.text[:300], what)
    if r.status_code >= 400:
        body = r.json()
        assert set(body) == {"error"}, body
        err = body["error"]
        assert set(err) == {"message", "type", "param", "code"} and isinstance(err["message"], str) \
            and err["message"] and isinstance(err["type"], str), body
        assert r.status_code in documented, (r.status_code, body, what)
        return
    assert not negative, f"a body that violates the schema was accepted: {what!r} -> {r.text[:200]}"
    if r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [b[6:] for b in r.text.split("\n\n") if b.startswith("data: ")]
        assert events and events[-1] == "[DONE]", r.text[-200:]
        for e in events[:-1]:
            obj = json.loads(e)
            assert obj.get("error", {}).get("type") != "server_error", (obj, what)  # a 500 in disguise
    elif r.headers.get("content-type", "").startswith("application/json"):
        r.json()


def send(srv, method: str, path: str, body, media_type: str | None) -> httpx.Response:
    if method == "GET":
        return httpx.get(srv.url + path, timeout=120)
    if isinstance(body, (bytes, str)):
        content = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else body
    else:
        content = json.dumps(body).encode()
    return httpx.post(srv.url + path, content=content, timeout=120,
                      headers={"content-type": media_type or "application/json"})


def operations(srv):
    for path, item in srv.schema["paths"].items():
        for method in item:
            if path != "/openapi.json" and not path.startswith("/docs"):
                yield method.upper(), path


def fuzz_schema(srv, examples: int) -> None:
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    ran = 0
    for method, path in operations(srv):
        op = srv.api[path][method]
        documented = {int(s) for s in srv.schema["paths"][path][method.lower()]["responses"] if s.isdigit()}
        for mode in modes if method == "POST" else modes[:1]:
            negative = mode == schemathesis.GenerationMode.NEGATIVE

            @settings(max_examples=examples, deadline=None, database=None, derandomize=examples <= QUICK,
                      suppress_health_check=list(HealthCheck))
            @given(op.as_strategy(generation_mode=mode))
            def one(case):
                r = send(srv, method, path, case.body if method == "POST" else None, case.media_type)
                check_answer(r, documented, negative, case.body)
                settle_and_check(srv)

            one()
            ran += 1
    assert ran >= 4  # the POST routes in both modes, the GET routes: the schema was read


# -- hostile JSON the schema cannot describe ---------------------------------------------------
JSON_LEAF = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=20))
JSON = st.recursive(JSON_LEAF, lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                                                          max_size=4), max_leaves=20)


@st.composite
def hostile_bodies(draw, route: str):
    base = {"/v1/solve": {"question": "2+2?"},
            "/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
            }.get(route, {"prompt": "hi", "max_tokens": 2})
    key = draw(st.sampled_from(["question", "prompt", "seed", "config", "n", "max_tokens", "temperature", "stop",
                                "stream", "stream_options", "logprobs", "method", "stop_token_ids", "logit_bias",
                                "messages", "top_logprobs", "max_completion_tokens", "response_format"]))
    depth = draw(st.integers(1, 3000))
    kind = draw(st.sampled_from(["nested", "digits", "nan", "utf8", "value", "not_object", "dup", "huge_str"]))
    if kind == "nested":
        inner = b"[" * depth + b"]" * depth if draw(st.booleans()) else b'{"a":' * depth + b"1" + b"}" * depth
        return json.dumps({**base, key: 0}).encode().replace(b"0}", inner + b"}")
    if kind == "digits":
        return json.dumps(base).encode()[:-1] + f', "{key}": {"9" * draw(st.integers(4000, 6000))}}}'.encode()
    if kind == "nan":
        lit = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1e999", "-1e999"]))
        return json.dumps(base).encode()[:-1] + f', "{key}": {lit}}}'.encode()
    if kind == "utf8":
        return json.dumps(base).encode()[:-2] + draw(st.binary(min_size=1, max_size=8)) + b'"}'
    if kind == "not_object":
        return json.dumps(draw(JSON)).encode()
    if kind == "dup":
        return json.dumps(base).encode()[:-1] + f', "{key}": 1, "{key}": "x"}}'.encode()
    if kind == "huge_str":
        return json.dumps({**base, key: "x" * draw(st.integers(10_000, 300_000))}).encode()
    return json.dumps({**base, key: draw(JSON)}).encode()


def fuzz_hostile(srv, examples: int) -> None:
    for _method, path in operations(srv):
        if _method != "POST":
            continue
        documented = {int(s) for s in srv.schema["paths"][path]["post"]["responses"] if s.isdigit()}

        @settings(max_examples=examples, deadline=None, database=None, derandomize=examples <= QUICK,
                  suppress_health_check=list(HealthCheck))
        @given(hostile_bodies(path))
        def one(body):
            r = httpx.post(srv.url + path, content=body, timeout=120, headers={"content-type": "application/json"})
            check_answer(r, documented, False, body[:200])
            settle_and_check(srv)

        one()


def test_fuzz_the_api_from_its_schema(served):
    fuzz_schema(served, QUICK)


def test_fuzz_with_hostile_json(served):
    fuzz_hostile(served, 3 * QUICK)


@pytest.mark.fuzz_long
def test_fuzz_long(served):
    fuzz_schema(served, LONG)
    fuzz_hostile(served, LONG)
