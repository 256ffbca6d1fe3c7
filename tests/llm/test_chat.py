"""ChatLLM (the chat-only general LLM) against a mock hosted chat API in front of gboost's chat
route, and the start-up probe that tells endpoint kinds apart."""
import asyncio
import logging
import random

import httpx
import pytest

from _fake_backend import FakeBackend
from _sleep import SleepRecorder
from gboost.llm.base import LLMError
from gboost.llm.chat import ChatLLM
from gboost.llm.endpoints import EndpointKindError, open_endpoint
from mock_chat_api import ChatOnlyAPI
from gboost.scheduler import Scheduler
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.faults import FaultConfig
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import CHAT_TEMPLATE, tiny_engine

pytestmark = pytest.mark.timeout(120)

HI = [{"role": "user", "content": "say hi"}]


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def chat_api():
    """``chat_api(**ChatOnlyAPI kwargs) -> server``; ``server.api`` is the mock, ``server.backend`` the model."""
    started = []

    def make(backend=None, fault=None, **kw):
        backend = backend or FakeBackend()
        api = ChatOnlyAPI(create_app(backend, fault=fault), **kw)
        srv = BackgroundServer(api, graceful_shutdown_s=0.5).start()
        srv.api, srv.backend = api, backend
        started.append(srv)
        return srv
    yield make
    for srv in started:
        srv.stop()


def writer(url, **kw):
    kw.setdefault("timeout_s", 10)
    kw.setdefault("sleep", SleepRecorder())
    kw.setdefault("rng", random.Random(0))
    return ChatLLM(url, **kw)


def test_write_returns_the_reply_and_the_billed_usage(chat_api):
    srv = chat_api(model="mock-chat")

    async def main():
        async with writer(srv.url + "/v1") as llm:
            info = await llm.check()
            a = await llm.write(HI, max_tokens=10, temperature=0)
            b = await llm.write(HI, max_tokens=30, temperature=0, stop=[a.text[4:6]])
            return info, a, b, llm.stats
    info, a, b, stats = run(main())
    assert info == {"model": "mock-chat", "kind": "chat", "usage_billed": True}
    ids = srv.backend.encode_chat(HI)
    assert a.text == srv.backend.decode(srv.backend.greedy(ids, 10)) and a.finish_reason == "length"
    assert a.prompt_tokens == len(ids) and a.completion_tokens == 10 and a.billed
    assert b.text == a.text[:a.text.index(a.text[4:6])] and b.finish_reason == "stop"
    # what the client counted is what the API billed (the probe's reply included)
    assert stats["prompt_tokens"] == srv.api.billed["prompt_tokens"]
    assert stats["completion_tokens"] == srv.api.billed["completion_tokens"]


def test_429_with_retry_after_and_5xx_are_retried(chat_api):
    srv = chat_api(faults=(429, 503, None), retry_after=1.5)

    async def main():
        async with writer(srv.url, model="mock-chat", max_retries=3) as llm:
            reply = await llm.write(HI, max_tokens=4, temperature=0)
            return reply, llm
    reply, llm = run(main())
    assert reply.completion_tokens == 4
    assert srv.api.injected == {429: 1, 503: 1} and llm.stats["retries"] == 2
    assert llm._sleep.delays[0] == 1.5  # Retry-After replaces the back-off
    assert dict(llm.retries_by_kind) == {"http_429": 1, "http_5xx": 1}


def test_persistent_faults_give_up_with_the_kind(chat_api):
    srv = chat_api(faults=(429,), retry_after=0)

    async def main():
        async with writer(srv.url, model="mock-chat", max_retries=2) as llm:
            await llm.write(HI, max_tokens=4)
    with pytest.raises(LLMError) as e:
        run(main())
    assert e.value.kind == "http_429" and e.value.attempts == 3 and e.value.retry_after == 0


def test_timeout_and_concurrency_limit(chat_api):
    srv = chat_api(fault=FaultConfig(latency_s=0.3))

    async def main():
        async with writer(srv.url, model="mock-chat", max_concurrency=2) as llm:
            srv.app.app.state.metrics.in_flight_max = 0
            await asyncio.gather(*(llm.write(HI, max_tokens=2) for _ in range(6)))
        return srv.app.app.state.metrics.in_flight_max
    assert run(main()) == 2

    async def slow():
        async with writer(srv.url, model="mock-chat", timeout_s=0.1, max_retries=1) as llm:
            await llm.write(HI, max_tokens=2)
    with pytest.raises(LLMError) as e:
        run(slow())
    assert e.value.kind == "timeout" and e.value.attempts == 2


def test_api_key_from_the_environment_is_sent_and_never_shown(chat_api, monkeypatch, caplog):
    secret = "sk-chat-SECRET-1a2b3c"
    srv = chat_api(api_key=secret, faults=(503, None))
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("MY_CHAT_KEY", secret)

    async def main():
        async with writer(srv.url, model="mock-chat", api_key_env="MY_CHAT_KEY") as llm:
            await llm.write(HI, max_tokens=2)  # a 503 first: the retry is logged
            return repr(llm)
    text = run(main())
    assert "<set>" in text and secret not in text and "retry" in caplog.text and secret not in caplog.text
    monkeypatch.setenv("MY_CHAT_KEY", "sk-wrong-0000")
    with pytest.raises(LLMError) as e:
        run(main())
    assert e.value.kind == "http_4xx" and e.value.status == 401 and "sk-wrong" not in str(e.value)


def test_a_reply_without_usage_is_estimated_and_marked():
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"choices": [{"index": 0, "message": {"role": "assistant", "content": "abc"},
                                                      "finish_reason": "stop"}]})

    async def main():
        async with writer("http://x.invalid/v1", model="m", transport=httpx.MockTransport(handler),
                          count_tokens=len) as llm:
            return await llm.write([{"role": "user", "content": "hello"}], max_tokens=5), llm.stats
    reply, stats = run(main())
    assert (reply.text, reply.prompt_tokens, reply.completion_tokens, reply.billed) == ("abc", 5, 3, False)
    assert stats["unbilled_replies"] == 1


def test_the_mock_is_chat_only(chat_api):
    srv = chat_api()
    r = httpx.post(srv.url + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 1})
    assert r.status_code == 404 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    body = {"model": "mock-chat", "messages": HI, "max_tokens": 1}
    for extra, param in (({"echo": True}, "echo"), ({"logprobs": True, "top_logprobs": 21}, "top_logprobs")):
        r = httpx.post(srv.url + "/v1/chat/completions", json={**body, **extra})
        assert r.status_code == 400 and r.json()["error"]["param"] == param
    r = httpx.post(srv.url + "/v1/chat/completions", json={**body, "messages": [{"role": "user", "content": [5, 6]}]})
    assert r.status_code == 400  # no token-id prompts
    assert "vocab_size" not in httpx.get(srv.url + "/v1/models").json()["data"][0]


def test_probe_finds_the_kinds_and_names_what_a_mode_lacks(chat_api):
    eng = tiny_engine({"slm": 1}, num_blocks=64, chat_template=CHAT_TEMPLATE)
    tok = eng.role("slm").tokenizer
    gboost = BackgroundServer(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny"))).start()
    hosted = chat_api(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny"))
    try:
        async def probe(url, kind):
            ep = await open_endpoint(url, kind, tokenizer=tok, timeout_s=10, max_retries=0)
            await ep.aclose()
            return ep
        both = run(probe(gboost.url, "auto"))
        assert both.kinds == ("completions", "chat") and both.scorer.model == both.writer.model == "tiny"
        chat_only = run(probe(hosted.url, "auto"))
        assert chat_only.kinds == ("chat",) and "404" in chat_only.lacks["completions"]
        with pytest.raises(EndpointKindError, match=r"fused steps needs a /v1/completions endpoint.*offers chat"):
            chat_only.need("completions", "fused steps")
        chat_only.need("chat", "delegated steps")
        assert run(probe(gboost.url, "chat")).kinds == ("chat",)
        with pytest.raises(LLMError) as e:  # named, and the endpoint does not have it
            run(probe(hosted.url, "completions"))
        assert e.value.status == 404
    finally:
        gboost.stop()
