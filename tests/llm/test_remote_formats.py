"""RemoteLLM against mock transports speaking other servers' wire formats (vLLM-style string and
token_id: keys, echo mismatches, a server without /health), retry-after parsing, error kinds and
credentials kept out of logs."""
import email.utils
import json
import time

import httpx
import pytest

from _remote_client import K, client, run
from gboost.llm.base import LLMError
from gboost.llm.remote import parse_retry_after

pytestmark = pytest.mark.timeout(60)


# ------------------------------------------------- other servers' wire formats
def _vllm_like(tokens, tops, text="", status=200):
    """A vLLM-style completions body (token strings / token_id: keys, no id fields)."""
    return {
        "id": "cmpl-1",
        "object": "text_completion",
        "choices": [{"index": 0, "text": text, "finish_reason": "length",
                     "logprobs": {"tokens": tokens, "token_logprobs": [None] * len(tokens),
                                  "top_logprobs": tops, "text_offset": [0] * len(tokens)}}],
    }


def _mock(handler):
    return httpx.MockTransport(handler)


def test_vllm_token_id_keys_echo():
    sent = {}

    def handler(request):
        body = json.loads(request.content)
        sent.update(body)
        ids = body["prompt"] + [7]
        tops = [None] + [{f"token_id:{(t + 1) % 50}": -0.5, f"token_id:{t}": -1.5, "token_id:60": -0.1} for t in ids[1:]]
        return httpx.Response(200, json=_vllm_like([f"token_id:{t}" for t in ids], tops))

    async def main():
        async with client("http://vllm.invalid:8000/v1", vocab_size=50, model="m", transport=_mock(handler)) as llm:
            return await llm.score([3, 4], [5, 6]), llm.stats

    rows, stats = run(main())
    assert sent["echo"] is True and sent["max_tokens"] == 1 and sent["logprobs"] == K
    assert sent["return_tokens_as_token_ids"] is True and sent["prompt"] == [3, 4, 5, 6] and sent["model"] == "m"
    assert [r.ids.tolist() for r in rows] == [[6, 5], [7, 6], [8, 7]]  # rows 2..4, sorted, id 60 >= V dropped
    assert rows[0].logprobs.tolist() == [-0.5, -1.5]
    assert stats["dropped_ids"] == 4  # positions 1..4 each listed id 60


def test_token_string_keys_need_a_mapping():
    vocab = {"a": 0, "b": 1, " c": 2}

    def handler(request):
        return httpx.Response(200, json=_vllm_like(["b"], [{"a": -0.2, " c": -2.0}]))

    async def main(mapping):
        async with client("http://h.invalid", token_to_id=mapping, transport=_mock(handler)) as llm:
            return await llm.next_logprobs([1])

    row = run(main(vocab.get))
    assert row.as_dict() == pytest.approx({0: -0.2, 2: -2.0})
    with pytest.raises(LLMError) as ei:
        run(main(None))
    assert ei.value.kind == "malformed" and "return-tokens-as-token-ids" in str(ei.value)


def test_echo_mismatch_and_missing_logprobs_are_malformed():
    def reorder(request):
        ids = json.loads(request.content)["prompt"][::-1] + [0]
        tops = [None] + [{"token_id:1": -1.0}] * (len(ids) - 1)
        return httpx.Response(200, json=_vllm_like([f"token_id:{t}" for t in ids], tops))

    def no_logprobs(request):
        return httpx.Response(200, json={"choices": [{"text": "x", "logprobs": None}]})

    async def main(h):
        async with client("http://h.invalid", transport=_mock(h)) as llm:
            await llm.score([1, 2], [3])

    for h in (reorder, no_logprobs):
        with pytest.raises(LLMError) as ei:
            run(main(h))
        assert ei.value.kind == "malformed"


def test_check_falls_back_to_models_without_health():
    paths = []

    def handler(request):
        paths.append(request.url.path)
        if request.url.path == "/health":
            return httpx.Response(404, json={"detail": "Not Found"})
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "hosted-llm", "object": "model"}]})
        ids = json.loads(request.content)["prompt"] + [0]
        tops = [None] + [{"token_id:1": -1.0}] * (len(ids) - 1)
        return httpx.Response(200, json=_vllm_like([f"token_id:{t}" for t in ids], tops, text="hi!"))

    async def main():
        async with client("https://api.invalid/v1", transport=_mock(handler)) as llm:
            info = await llm.check(100, [5, 6], probe_text="hi")
            return info, llm.model

    info, model = run(main())
    assert paths == ["/health", "/v1/models", "/v1/completions"]
    assert model == "hosted-llm" and info["health"] == "/v1/models" and info["remote_vocab_size"] is None


def test_retry_after_parsing():
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 0.5 ") == 0.5
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31


def test_llm_error_kinds():
    with pytest.raises(ValueError):
        LLMError("weird")
    e = LLMError("vocab_mismatch")
    assert e.kind == "vocab_mismatch" and not e.retryable and "vocabulary" in str(e)
    assert LLMError("http_429", status=429).retryable


def test_url_credentials_never_reach_logs_errors_or_repr(caplog):
    import asyncio
    import logging

    from gboost.llm.base import LLMError
    from gboost.llm.remote import RemoteLLM

    async def go():
        llm = RemoteLLM("http://user:s3cr3tpw@127.0.0.1:9/v1", timeout_s=0.5, max_retries=1, backoff_base_s=0.01)
        try:
            await llm.next_logprobs([1, 2, 3])
        except LLMError as e:
            return llm, e
        finally:
            await llm.aclose()
    with caplog.at_level(logging.DEBUG):
        llm, err = asyncio.run(go())
    assert err.kind == "connect"
    for text in (caplog.text, str(err), repr(err), repr(llm)):
        assert "s3cr3tpw" not in text
    assert "127.0.0.1:9" in repr(llm)
