"""/v1/chat/completions with the official `openai` client as the caller: the model's chat template,
sampling options, logprobs, streamed deltas that add up to the plain answer, OpenAI-shaped errors."""
import httpx
import pytest

from _fake_backend import FakeBackend
from gboost.scheduler import Scheduler
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import CHAT_TEMPLATE, tiny_engine

openai = pytest.importorskip("openai")

pytestmark = pytest.mark.timeout(120)

HELLO = [{"role": "system", "content": "be brief."}, {"role": "user", "content": "say hi"}]


@pytest.fixture(scope="module")
def srv():
    backend = FakeBackend(token_latency_s=0.002)  # tokens apart: a stream has several chunks
    s = BackgroundServer(create_app(backend, backend.model_name, max_logprobs=20), graceful_shutdown_s=0.5).start()
    s.backend = backend
    yield s
    s.stop()


def client(s) -> "openai.OpenAI":
    return openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0, timeout=60)


def plain_completion(s, ids, **kw) -> dict:
    r = httpx.post(s.url + "/v1/completions", json={"prompt": ids, **kw}, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_chat_is_the_completion_of_the_templated_prompt(srv):
    ids = srv.backend.encode_chat(HELLO)
    got = client(srv).chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=12, temperature=0)
    want = plain_completion(srv, ids, max_tokens=12, temperature=0)
    assert got.object == "chat.completion" and got.id.startswith("chatcmpl-")
    (c,) = got.choices
    assert c.message.role == "assistant" and c.message.content == want["choices"][0]["text"]
    assert c.finish_reason == want["choices"][0]["finish_reason"]
    assert c.message.content == srv.backend.decode(srv.backend.greedy(ids, 12))[:len(c.message.content)]
    assert got.usage.prompt_tokens == len(ids) and got.usage.completion_tokens == want["usage"]["completion_tokens"]
    assert got.usage.total_tokens == got.usage.prompt_tokens + got.usage.completion_tokens


def test_developer_role_and_content_parts_render_like_system_and_text(srv):
    parts = [{"role": "developer", "content": "be brief."},
             {"role": "user", "content": [{"type": "text", "text": "say"}, {"type": "text", "text": "hi"}]}]
    a = client(srv).chat.completions.create(model="fake-bigram", messages=parts, max_tokens=6, temperature=0)
    b = client(srv).chat.completions.create(
        model="fake-bigram", messages=[HELLO[0], {"role": "user", "content": "say\nhi"}], max_tokens=6, temperature=0)
    assert a.usage.prompt_tokens == b.usage.prompt_tokens
    assert a.choices[0].message.content == b.choices[0].message.content


def test_max_completion_tokens_n_seed_and_stop(srv):
    c = client(srv)
    got = c.chat.completions.create(model="fake-bigram", messages=HELLO, max_completion_tokens=5, n=3, seed=7)
    assert [ch.index for ch in got.choices] == [0, 1, 2] and got.usage.completion_tokens <= 15
    again = c.chat.completions.create(model="fake-bigram", messages=HELLO, max_completion_tokens=5, n=3, seed=7)
    assert [ch.message.content for ch in got.choices] == [ch.message.content for ch in again.choices]
    # max_completion_tokens wins over max_tokens
    both = c.chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=2, max_completion_tokens=4,
                                     temperature=0)
    assert both.usage.completion_tokens == 4 and both.choices[0].finish_reason == "length"
    # a stop string taken from the greedy text cuts the content before it
    long = c.chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=10, temperature=0)
    text = long.choices[0].message.content
    stop = text[3:5]
    cut = c.chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)] and cut.choices[0].finish_reason == "stop"


def test_logprobs_are_the_models_and_name_each_generated_token(srv):
    got = client(srv).chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=6, temperature=0,
                                              logprobs=True, top_logprobs=3)
    (c,) = got.choices
    entries = c.logprobs.content
    assert "".join(e.token for e in entries) == c.message.content
    ids = srv.backend.encode_chat(HELLO)
    for e in entries:
        dist = srv.backend.true_logprobs(ids)
        tid = srv.backend.encode(e.token)[0]
        assert e.logprob == pytest.approx(float(dist[tid]), abs=1e-5)
        assert e.bytes == list(e.token.encode())
        assert len(e.top_logprobs) == 3
        assert [t.logprob for t in e.top_logprobs] == sorted((t.logprob for t in e.top_logprobs), reverse=True)
        assert e.top_logprobs[0].logprob == pytest.approx(float(dist.max()), abs=1e-5)
        ids = ids + [tid]
    plain = client(srv).chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=6, temperature=0)
    assert plain.choices[0].logprobs is None
    zero = client(srv).chat.completions.create(model="fake-bigram", messages=HELLO, max_tokens=2, temperature=0,
                                               logprobs=True)
    assert all(e.top_logprobs == [] for e in zero.choices[0].logprobs.content)


def collect(stream):
    """(content per index, finish per index, logprob entries per index, usage, chunks)."""
    text, finish, lps, usage, chunks = {}, {}, {}, None, []
    for ch in stream:
        chunks.append(ch)
        assert ch.object == "chat.completion.chunk" and ch.id == chunks[0].id
        if not ch.choices:
            usage = ch.usage
            continue
        for c in ch.choices:
            assert c.index not in finish, "no chunk after a choice's finish_reason"
            if c.delta.role is not None:
                assert c.delta.role == "assistant" and c.index not in text, "the role comes first"
            text[c.index] = text.get(c.index, "") + (c.delta.content or "")
            if c.logprobs is not None:
                lps.setdefault(c.index, []).extend(c.logprobs.content)
            if c.finish_reason is not None:
                finish[c.index] = c.finish_reason
    return text, finish, lps, usage, chunks


@pytest.mark.parametrize("kw", [
    dict(max_tokens=16, temperature=0),
    dict(max_tokens=12, n=2, seed=3),
    dict(max_tokens=12, n=2, seed=3, logprobs=True, top_logprobs=2),
    dict(max_tokens=20, temperature=0, stop=["e", "a "]),
])
def test_streamed_chunks_add_up_to_the_plain_answer(srv, kw):
    c = client(srv)
    want = c.chat.completions.create(model="fake-bigram", messages=HELLO, **kw)
    text, finish, lps, usage, chunks = collect(c.chat.completions.create(
        model="fake-bigram", messages=HELLO, stream=True, stream_options={"include_usage": True}, **kw))
    assert len(chunks) > 3  # really streamed, not one chunk per choice
    for w in want.choices:
        assert text[w.index] == w.message.content and finish[w.index] == w.finish_reason
        if kw.get("logprobs"):
            assert [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in lps[w.index]] == \
                [(e.token, e.logprob, [t.token for t in e.top_logprobs]) for e in w.logprobs.content]
    assert usage is not None and usage.model_dump() == want.usage.model_dump()
    assert all(ch.usage is None for ch in chunks[:-1])


def test_stream_without_include_usage_has_no_usage(srv):
    text, finish, _, usage, chunks = collect(client(srv).chat.completions.create(
        model="fake-bigram", messages=HELLO, stream=True, max_tokens=4, temperature=0))
    assert usage is None and finish == {0: "length"} and text[0]


@pytest.mark.parametrize("body, status, param", [
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "tool", "content": "x"}]}, 400, "messages.0.role"),
    ({"messages": [{"role": "user"}]}, 400, "messages.0.content"),
    ({"messages": HELLO, "top_logprobs": 2}, 400, "top_logprobs"),
    ({"messages": HELLO, "logprobs": True, "top_logprobs": 21}, 400, "top_logprobs"),
    ({"messages": HELLO, "n": 0}, 400, "n"),
    ({"messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    ({"messages": HELLO, "tools": [{"type": "function", "function": {"name": "f"}}]}, 400, "tools"),
    ({"messages": HELLO, "max_tokens": 10_000}, 400, "prompt"),
    ({"messages": [{"role": "user", "content": "CAPITALS are not in this vocabulary"}]}, 400, None),
    ({"messages": HELLO, "model": "gpt-nothing"}, 404, "model"),
])
def test_bad_bodies_get_openai_shaped_4xx(srv, body, status, param):
    r = httpx.post(srv.url + "/v1/chat/completions", json={"model": "fake-bigram", **body}, timeout=30)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"] and err["param"] == param
    # and the openai client raises its typed error with that body
    cls = openai.NotFoundError if status == 404 else openai.BadRequestError
    with pytest.raises(cls) as e:
        client(srv).chat.completions.create(**{"model": "fake-bigram", **body})
    assert e.value.status_code == status and e.value.body["message"] == err["message"]


def test_not_json_and_not_an_object_are_400(srv):
    for content in (b"{", b"[1, 2]"):
        r = httpx.post(srv.url + "/v1/chat/completions", content=content,
                       headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"


def test_a_resident_model_answers_through_its_chat_template():
    eng = tiny_engine({"slm": 1}, num_blocks=128, chat_template=CHAT_TEMPLATE)
    backend = EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny")
    s = BackgroundServer(create_app(backend)).start()
    try:
        msgs = [{"role": "user", "content": "2+2?"}]
        ids = eng.role("slm").tokenizer.encode_chat(msgs)
        assert eng.role("slm").tokenizer.decode(ids) == "user: 2+2?\nassistant: "
        got = client(s).chat.completions.create(model="tiny", messages=msgs, max_tokens=8, temperature=0)
        want = plain_completion(s, ids, max_tokens=8, temperature=0)
        assert got.choices[0].message.content == want["choices"][0]["text"]
        assert got.usage.prompt_tokens == len(ids)
        text, *_ = collect(client(s).chat.completions.create(model="tiny", messages=msgs, max_tokens=8,
                                                             temperature=0, stream=True))
        assert text[0] == want["choices"][0]["text"]
    finally:
        s.stop()
    eng2 = tiny_engine({"slm": 1}, num_blocks=64)  # no chat template: a 400 that says so
    s = BackgroundServer(create_app(EngineCompletionBackend(eng2, Scheduler(eng2), model_name="tiny"))).start()
    try:
        with pytest.raises(openai.BadRequestError, match="no chat template"):
            client(s).chat.completions.create(model="tiny", messages=[{"role": "user", "content": "hi"}])
    finally:
        s.stop()
