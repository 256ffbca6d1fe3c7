"""What a request may cost before any work starts (gboost.server.limits): a body over the limit is a
413 before the server has read it (declared or chunked), and a question whose bytes no prompt of the
model's positions could hold is refused before it is tokenized."""
import json
import socket

import httpx
import pytest

from gboost.server.app import create_app
from gboost.server.limits import BodyLimit, max_token_bytes, must_be_too_long, question_byte_limit
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import byte_tokenizer, tiny_app, tiny_stack

from _fake_backend import FakeBackend

pytestmark = pytest.mark.timeout(120)

LIMIT = 4096


@pytest.fixture(scope="module")
def small():
    """A server whose bodies may be at most LIMIT bytes."""
    backend = FakeBackend()
    with BackgroundServer(create_app(backend, backend.model_name, max_body_bytes=LIMIT)) as srv:
        yield srv


def raw_exchange(srv, head: bytes, parts: list[bytes]) -> bytes:
    """Send ``head`` and ``parts`` on one connection (never the rest of the body), then read what the
    server answers until it closes; a server that waited for the body would leave recv to time out."""
    with socket.create_connection(("127.0.0.1", srv.port), timeout=20) as s:
        s.sendall(head)
        for p in parts:
            s.sendall(p)
        out = b""
        while b"\r\n\r\n" not in out or not _complete(out):
            chunk = s.recv(65536)
            if not chunk:
                break
            out += chunk
        return out


def _complete(resp: bytes) -> bool:
    head, _, body = resp.partition(b"\r\n\r\n")
    n = next((int(v) for k, _, v in (ln.partition(b":") for ln in head.split(b"\r\n")[1:])
              if k.strip().lower() == b"content-length"), None)
    return n is not None and len(body) >= n


def error_413(resp: bytes) -> dict:
    head, _, body = resp.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), resp[:300]
    err = json.loads(body)["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["code"] == "request_too_large" and err["type"] == "invalid_request_error"
    assert str(LIMIT) in err["message"]
    return err


def test_a_declared_length_over_the_limit_is_refused_before_any_byte_of_the_body(small):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 1000000000\r\n\r\n")
    error_413(raw_exchange(small, head, []))  # nothing of the gigabyte was sent


def test_a_chunked_body_is_refused_once_it_passes_the_limit_without_its_end(small):
    head = (b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"x" * (LIMIT // 2 + 1)
    framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
    error_413(raw_exchange(small, head, [framed, framed]))  # no terminating 0-chunk: the body never ends


def test_a_body_at_the_limit_is_read_and_answered(small):
    body = json.dumps({"prompt": "hi", "max_tokens": 2}).encode()
    body = body[:-1] + b" " * (LIMIT - len(body)) + b"}"  # whitespace: still the same JSON
    assert len(body) == LIMIT
    r = httpx.post(small.url + "/v1/completions", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 200, r.text
    r = httpx.post(small.url + "/v1/completions", content=body + b" ", headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
    assert 'gboost_responses_total{status="413"}' in httpx.get(small.url + "/metrics").text


def test_a_limit_must_be_positive():
    with pytest.raises(ValueError, match="positive"):
        BodyLimit(None, 0)


# -- questions too long to tokenize ----------------------------------------------------------------
def test_the_byte_tokenizer_s_longest_token_is_its_longest_special_token():
    assert max_token_bytes(byte_tokenizer()) == len("<|endoftext|>".encode())


def test_must_be_too_long_counts_utf8_bytes_and_ignores_the_ends():
    assert not must_be_too_long("x" * 10, 10) and must_be_too_long("x" * 11, 10)
    assert must_be_too_long("é" * 6, 10) and not must_be_too_long("é" * 5, 10)  # 2 bytes each
    assert must_be_too_long("😀" * 3, 10) and not must_be_too_long(" " * 100 + "x", 10)
    assert not must_be_too_long("x" * 10 ** 6, None)  # no bound known: the exact check alone decides


def test_a_question_no_prompt_could_hold_is_refused_before_it_is_tokenized(monkeypatch):
    stack = tiny_stack(num_blocks=64)
    limit = question_byte_limit(stack.executor)
    assert limit == stack.executor.slm.model.max_positions * len("<|endoftext|>")

    def never(_question):
        raise AssertionError("tokenized")
    monkeypatch.setattr(stack.executor, "_root_ids", never)
    with BackgroundServer(tiny_app(stack)) as srv:
        for stream in (False, True):
            r = httpx.post(srv.url + "/v1/solve", json={"question": "x" * (limit + 1), "stream": stream}, timeout=60)
            assert r.status_code == 400, r.text
            err = r.json()["error"]
            assert err["code"] == "question_too_long" and err["param"] == "question"
    assert stack.engine.cache.live == {}


def test_a_completion_prompt_no_context_could_hold_is_refused_before_it_is_tokenized(monkeypatch):
    from gboost.server.engine_backend import EngineCompletionBackend
    stack = tiny_stack(num_blocks=64)
    app = tiny_app(stack)
    backend = app.state.backend
    assert isinstance(backend, EngineCompletionBackend)
    limit = backend.text_byte_limit
    assert limit == backend.max_model_len * len("<|endoftext|>")

    def never(*_a):
        raise AssertionError("tokenized")
    for name in ("encode_prompt", "encode_chat"):
        monkeypatch.setattr(EngineCompletionBackend, name, never)
    big = "x" * (limit + 1)
    with BackgroundServer(app) as srv:
        for stream in (False, True):
            r = httpx.post(srv.url + "/v1/completions", json={"prompt": ["ok", big], "stream": stream}, timeout=60)
            assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded", r.text
            r = httpx.post(srv.url + "/v1/chat/completions", timeout=60, json={
                "stream": stream, "messages": [{"role": "system", "content": big[:limit // 2]},
                                               {"role": "user", "content": big[:limit // 2 + 2]}]})
            assert r.status_code == 400 and r.json()["error"]["param"] == "messages", r.text
    assert stack.engine.cache.live == {}


def test_serve_takes_the_limit_from_the_command_line_and_refuses_a_non_positive_one():
    from gboost.cli import build_parser, main
    assert build_parser().parse_args(["serve", "--model", "m"]).max_body_bytes == 4 << 20
    assert build_parser().parse_args(["serve", "--model", "m", "--max-body-bytes", "123"]).max_body_bytes == 123
    with pytest.raises(SystemExit, match="--max-body-bytes: the body limit must be a positive"):
        main(["serve", "--model", "m", "--max-body-bytes", "0"])  # before any model loads

