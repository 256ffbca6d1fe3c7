"""/v1/completions with stream=true: SSE chunks whose text adds up to the non-streamed answer."""
import json
import time

import httpx
import pytest

from _fake_backend import FakeBackend
from gboost.scheduler import Scheduler
from gboost.server.app import create_app
from gboost.server.uvicorn_server import BackgroundServer
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.testing import tiny_engine

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def trickle_server():
    """Tokens 5 ms apart, so chunking is not left to the event loop's timing (with no pause a
    loaded machine may drain a whole answer into one or two chunks)."""
    backend = FakeBackend(token_latency_s=0.005)
    srv = BackgroundServer(create_app(backend, backend.model_name, max_logprobs=64), graceful_shutdown_s=0.5)
    srv.start()
    yield srv
    srv.stop()


def completion(srv, body):
    r = httpx.post(srv.url + "/v1/completions", json=body, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()


def streamed(srv, body):
    """(text per choice index, finish_reason per index, chunks, usage or None); with logprobs,
    each chunk's logprobs lists are appended to ``streamed.logprobs[index]``."""
    r = httpx.post(srv.url + "/v1/completions", json={**body, "stream": True}, timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    blocks = [b for b in r.text.split("\n\n") if b.strip()]
    assert all(b.startswith("data: ") for b in blocks) and blocks[-1] == "data: [DONE]"
    chunks = [json.loads(b[6:]) for b in blocks[:-1]]
    text, finish, use = {}, {}, None
    streamed.logprobs = {}
    for c in chunks:
        assert "error" not in c, c
        assert c["object"] == "text_completion" and c["id"] == chunks[0]["id"]
        if not c["choices"]:
            use = c["usage"]
            continue
        (ch,) = c["choices"]
        assert ch["index"] not in finish, "no chunk after a choice's finish_reason"
        text[ch["index"]] = text.get(ch["index"], "") + ch["text"]
        if body.get("logprobs") is not None:
            lp = streamed.logprobs.setdefault(ch["index"], {})
            for k, v in ch["logprobs"].items():
                lp[k] = lp.get(k, []) + v
        else:
            assert ch["logprobs"] is None
        if ch["finish_reason"] is not None:
            finish[ch["index"]] = ch["finish_reason"]
    return text, finish, chunks, use


def same_as_plain(srv, body):
    want = completion(srv, body)
    text, finish, chunks, use = streamed(srv, {**body, "stream_options": {"include_usage": True}})
    assert sorted(text) == [c["index"] for c in want["choices"]]
    for c in want["choices"]:
        assert text[c["index"]] == c["text"], (c["index"], text[c["index"]], c["text"])
        assert finish[c["index"]] == c["finish_reason"]
    assert use == want["usage"]
    for c in want["choices"]:
        assert streamed.logprobs.get(c["index"]) == c["logprobs"], c["index"]
    return want, chunks


@pytest.mark.parametrize("body", [
    {"prompt": "the ", "max_tokens": 30, "temperature": 0.9, "seed": 7},
    {"prompt": ["ab", "hello"], "n": 2, "max_tokens": 25, "temperature": 1.0, "seed": 3},
    {"prompt": [[1, 2, 3]], "max_tokens": 12, "temperature": 0},
    {"prompt": "the ", "max_tokens": 30, "temperature": 0.9, "seed": 5, "logprobs": 3},
    {"prompt": ["ab", "hello"], "n": 2, "max_tokens": 20, "temperature": 1.0, "seed": 2, "logprobs": 0,
     "stop": ["e"], "return_tokens_as_token_ids": False},
    {"prompt": "ab", "max_tokens": 0},
])
def test_streamed_text_equals_the_plain_answer(trickle_server, body):
    want, chunks = same_as_plain(trickle_server, body)
    if body["max_tokens"] >= 12:
        assert len(chunks) > len(want["choices"]) + 1  # text came in pieces, not in one final chunk
    if body.get("logprobs") is not None:  # and so did the logprobs, with the text they belong to
        pieces = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"] is None]
        assert sum(len(p["logprobs"]["tokens"]) for p in pieces) >= len(pieces) // 2 > 0


def test_stop_strings_end_the_stream_exactly_where_the_plain_answer_stops(make_server):
    # tokens trickle in (10 ms each), so text is released piece by piece before a stop completes
    backend = FakeBackend(token_latency_s=0.01, max_model_len=512)
    srv = make_server(backend)
    base = {"prompt": "the ", "max_tokens": 40, "temperature": 0.9, "seed": 11}
    full = completion(srv, base)["choices"][0]["text"]
    assert len(full) >= 20
    stops = [full[10:13], full[15:17] + "?!?"]   # the first occurs; the second (ends in "?!?") need not
    want, _ = same_as_plain(srv, {**base, "stop": stops})
    assert want["choices"][0]["finish_reason"] == "stop" and want["choices"][0]["text"] == full[:10]
    one_char = full[12]                         # a single-token stop string stops generation early
    want, _ = same_as_plain(srv, {**base, "stop": one_char})
    assert want["choices"][0]["text"] == full[:full.index(one_char)]
    # a stop string ends the choice's generation at once: 400 more tokens would take 4 s
    t0 = time.monotonic()
    text, finish, _, _ = streamed(srv, {**base, "max_tokens": 400, "stop": [full[10:13]], "stop_token_ids": []})
    assert text[0] == full[:10] and finish[0] == "stop" and time.monotonic() - t0 < 2.0
    assert backend.generating == 0


def test_a_stopped_choice_frees_its_generation_while_others_go_on(make_server):
    backend = FakeBackend(token_latency_s=0.01, max_model_len=512)
    srv = make_server(backend)
    base = {"prompt": "the ", "max_tokens": 150, "temperature": 0.9, "seed": 5, "n": 2, "stop_token_ids": []}
    plain = {c["index"]: c["text"] for c in completion(srv, base)["choices"]}
    stop = next(plain[0][i:i + 3] for i in range(8, 40) if plain[0][i:i + 3] not in plain[1])
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                      json={**base, "stop": stop, "stream": True}) as r:
        for line in r.iter_lines():
            if line.startswith("data: {"):
                ch = json.loads(line[6:])["choices"][0]
                if ch["finish_reason"] == "stop":
                    assert ch["index"] == 0
                    time.sleep(0.2)
                    assert backend.generating == 1   # choice 0's generation ended, choice 1's goes on
                    break
        else:
            raise AssertionError("choice 0 never stopped")


def test_chunks_arrive_while_generating_and_disconnect_cancels(make_server):
    backend = FakeBackend(token_latency_s=0.05, max_model_len=512)
    srv = make_server(backend)
    t0 = time.monotonic()
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                      json={"prompt": "ab", "max_tokens": 40, "temperature": 1.0, "seed": 1, "stream": True,
                            "stop_token_ids": []}) as r:
        lines = r.iter_lines()
        first = next(line for line in lines if line.startswith("data: "))
        t_first = time.monotonic() - t0
        assert json.loads(first[6:])["choices"][0]["finish_reason"] is None
        rest = [line for line in lines if line.startswith("data: ")]
    assert rest[-1] == "data: [DONE]" and time.monotonic() - t0 > t_first + 0.5
    # now hang up after the first chunk of a long generation: it must stop on the server
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30,
                      json={"prompt": "ab", "max_tokens": 400, "temperature": 1.0, "seed": 1, "stream": True,
                            "stop_token_ids": []}) as r:
        lines = r.iter_lines()
        next(line for line in lines if line.startswith("data: "))
        assert backend.generating == 1
    end = time.monotonic() + 5
    while backend.generating and time.monotonic() < end:
        time.sleep(0.02)
    assert backend.generating == 0


def test_metrics_count_streamed_completions(server):
    def val(name):
        for line in httpx.get(server.url + "/metrics").text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[-1])
    before = val("gboost_completion_tokens_total"), val("gboost_completions_total")
    want = completion(server, {"prompt": "ab", "max_tokens": 9, "temperature": 0})
    streamed(server, {"prompt": "ab", "max_tokens": 9, "temperature": 0})
    n = want["usage"]["completion_tokens"]
    assert val("gboost_completion_tokens_total") - before[0] == 2 * n
    assert val("gboost_completions_total") - before[1] == 2


def test_a_streamed_completion_is_in_flight_until_its_stream_closes(make_server):
    backend = FakeBackend(token_latency_s=0.05, max_model_len=512)
    srv = make_server(backend)

    def in_flight():
        for line in httpx.get(srv.url + "/metrics").text.splitlines():
            if line.startswith("gboost_requests_in_flight "):
                return float(line.split()[-1])

    body = {"prompt": "ab", "max_tokens": 400, "temperature": 1.0, "seed": 1, "stream": True,
            "stop_token_ids": []}
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30, json=body) as r:
        lines = r.iter_lines()    # kept: a dropped line iterator closes the response
        next(line for line in lines if line.startswith("data: "))
        assert in_flight() == 1   # the route has returned; its stream is still running
    end = time.monotonic() + 5    # the client hung up mid-stream: the count goes back
    while in_flight() and time.monotonic() < end:
        time.sleep(0.02)
    assert in_flight() == 0
    with httpx.stream("POST", srv.url + "/v1/completions", timeout=30, json={**body, "max_tokens": 8}) as r:
        assert r.status_code == 200
        assert r.read().endswith(b"data: [DONE]\n\n")  # a whole stream
    assert in_flight() == 0
    r = httpx.post(srv.url + "/v1/completions", json={**body, "echo": True}, timeout=30)
    assert r.status_code == 400 and in_flight() == 0  # refused before streaming: nothing held


def test_engine_backend_stream_holds_back_partial_utf8(make_server):
    """The tiny engine's byte tokenizer samples arbitrary bytes: split UTF-8 characters must be
    held back until complete, and the streamed text must still equal the plain one."""
    eng = tiny_engine({"slm": 1})
    backend = EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny")
    srv = make_server(backend)
    for seed in range(3):
        body = {"prompt": [104, 105, 195], "max_tokens": 24, "temperature": 1.5, "seed": seed, "n": 2}
        if seed == 2:  # logprobs too: rows from the real engine, tokens that are half a character
            body["logprobs"] = 2
        same_as_plain(srv, body)
    assert eng.cache.live == {}
    eng.cache.check_refcounts()
    kv = {line.split()[0]: float(line.split()[1]) for line in httpx.get(srv.url + "/metrics").text.splitlines()
          if line.startswith("gboost_kv_")}
    n = eng.cache.blocks.num_blocks
    assert kv == {"gboost_kv_blocks_total": n, "gboost_kv_blocks_free": n,  # cached blocks count as free
                  "gboost_kv_preemptions_total": 0, "gboost_kv_preempted_tokens_total": 0,
                  "gboost_kv_sequences_live": 0, "gboost_kv_refcount_errors": 0,
                  "gboost_kv_blocks_cached": eng.cache.blocks.num_free() - len(eng.cache.blocks.free_ids)}
