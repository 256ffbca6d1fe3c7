"""RemoteLLM against a real gboost server over HTTP (and a few mock transports
for other servers' wire formats). Every test is bounded: small timeouts, a
patched back-off sleep, asyncio.wait_for around each scenario."""

import asyncio
import logging
import math
import time

import httpx
import pytest
import torch

from _fake_backend import FakeBackend
from _remote_client import K, client, run
from _sleep import SleepRecorder
from gboost.llm.base import GeneralLLM, LLMError, TokenLogprobs
from gboost.llm.topk import MISSING_LOGPROB_PENALTY, dense_from_topk, union_support
from gboost.server.faults import FaultConfig

pytestmark = pytest.mark.timeout(60)

def assert_row_matches(row: TokenLogprobs, true: torch.Tensor, k: int = K):
    """Returned ids hold the true top-k, every value is the true log-prob, sorted."""
    assert not row.full
    ids = row.ids.tolist()
    assert set(torch.topk(true, k).indices.tolist()) <= set(ids)
    assert len(ids) <= k + 1
    torch.testing.assert_close(row.logprobs, true[row.ids], rtol=0, atol=1e-6)
    assert torch.all(row.logprobs[:-1] >= row.logprobs[1:])


# --------------------------------------------------------------- correctness
def test_next_logprobs_and_score_equal_backend(make_server):
    srv = make_server()
    b = srv.backend

    async def main():
        async with client(srv.url, vocab_size=b.vocab_size) as llm:
            assert isinstance(llm, GeneralLLM)
            ids = b.encode("the ca")
            row = await llm.next_logprobs(ids)
            assert_row_matches(row, b.true_logprobs(ids))

            prefix, draft = b.encode("the ca"), b.encode("t sat")
            rows = await llm.score(prefix, draft)
            assert len(rows) == len(draft) + 1
            for j, r in enumerate(rows):
                ctx = prefix + draft[:j]
                assert_row_matches(r, b.true_logprobs(ctx))  # echo aligned: row j = dist. of draft[j]
                if j < len(draft):  # the actual draft token's log-prob is always reported
                    assert draft[j] in r.ids.tolist()
            # the last score row is the next-token distribution after the draft
            nxt = await llm.next_logprobs(prefix + draft)
            top = torch.topk(b.true_logprobs(prefix + draft), K).indices
            assert rows[-1].ids[:K].tolist() == nxt.ids[:K].tolist() == top.tolist()

            one = await llm.score(prefix, [])
            assert len(one) == 1
            assert_row_matches(one[0], b.true_logprobs(prefix))
            with pytest.raises(ValueError):
                await llm.score([], draft)
            with pytest.raises(ValueError):
                await llm.next_logprobs([])
            assert llm.stats["retries"] == 0

    run(main())


def test_full_rows_when_top_k_covers_vocab(make_server):
    b = FakeBackend()
    srv = make_server(b, max_logprobs=b.vocab_size)

    async def main():
        async with client(srv.url, top_logprobs=b.vocab_size, vocab_size=b.vocab_size) as llm:
            row = await llm.next_logprobs(b.encode("ab"))
            assert row.full and sorted(row.ids.tolist()) == list(range(b.vocab_size))
            logp, sup = dense_from_topk([row], b.vocab_size)
            torch.testing.assert_close(logp[0], b.true_logprobs(b.encode("ab")), rtol=0, atol=1e-6)
            assert bool(sup.all())

    run(main())


def test_rows_feed_union_support(make_server):
    srv = make_server()
    b = srv.backend
    V = b.vocab_size

    async def main():
        async with client(srv.url, vocab_size=V) as llm:
            return await llm.score(b.encode("hello"), b.encode(" wo"))

    rows = run(main())
    slm = torch.log_softmax(torch.randn(len(rows), V, generator=torch.Generator().manual_seed(0)), -1)
    u = union_support(slm, rows, K)
    for r, row in enumerate(rows):
        llm_ids = set(row.ids.tolist())
        slm_top = set(torch.topk(slm[r], K).indices.tolist())
        assert set(torch.nonzero(u.support[r]).flatten().tolist()) == llm_ids | slm_top
        fill = float(row.logprobs.min()) - MISSING_LOGPROB_PENALTY
        for t in range(V):
            if t in llm_ids:
                assert u.llm_logp[r, t] == pytest.approx(float(row.as_dict()[t]))
            elif t in slm_top:
                assert u.llm_logp[r, t] == pytest.approx(fill)
                assert u.slm_logp[r, t] == slm[r, t]
            else:
                assert u.llm_logp[r, t] == -math.inf and u.slm_logp[r, t] == -math.inf


# ------------------------------------------------------------------ retries
def test_503_then_success_is_retried(make_server):
    srv = make_server(fault=FaultConfig(fail_first=2, status_code=503))
    sleep = SleepRecorder()

    async def main():
        async with client(srv.url, sleep=sleep, backoff_base_s=0.25, max_retries=3) as llm:
            row = await llm.next_logprobs([1, 2, 3])
            return row, dict(llm.stats)

    row, stats = run(main())
    assert len(row) >= K
    assert srv.app.state.faults.calls == 3 and stats["attempts"] == 3 and stats["retries"] == 2
    # jittered exponential back-off: base * 2**(n-1) * U[0.5, 1)
    assert len(sleep.delays) == 2
    assert 0.125 <= sleep.delays[0] < 0.25 and 0.25 <= sleep.delays[1] < 0.5


def test_429_retry_after_is_honoured(make_server):
    srv = make_server(fault=FaultConfig(fail_first=1, status_code=429, retry_after=2.5))
    sleep = SleepRecorder()

    async def main():
        async with client(srv.url, sleep=sleep) as llm:
            await llm.score([1, 2], [3])

    t0 = time.perf_counter()
    run(main())
    assert sleep.delays == [2.5]
    assert time.perf_counter() - t0 < 2.0  # the (patched) sleep did not really wait
    # a huge Retry-After is capped
    srv2 = make_server(fault=FaultConfig(fail_first=1, status_code=429, retry_after=3600))
    sleep2 = SleepRecorder()

    async def main2():
        async with client(srv2.url, sleep=sleep2, max_retry_after_s=5) as llm:
            await llm.next_logprobs([1])

    run(main2())
    assert sleep2.delays == [5]


def test_persistent_5xx_and_429_give_up(make_server):
    srv = make_server(fault=FaultConfig(error_rate=1.0, status_code=502))

    async def main(url, retries):
        async with client(url, max_retries=retries) as llm:
            await llm.next_logprobs([1])

    with pytest.raises(LLMError) as ei:
        run(main(srv.url, 2))
    assert ei.value.kind == "http_5xx" and ei.value.status == 502 and ei.value.attempts == 3
    assert srv.app.state.faults.calls == 3

    srv.app.state.faults.configure(FaultConfig(error_rate=1.0, status_code=429, retry_after=0))
    with pytest.raises(LLMError) as ei:
        run(main(srv.url, 1))
    assert ei.value.kind == "http_429" and ei.value.attempts == 2 and ei.value.retry_after == 0


def test_timeout_after_retries_within_bound(make_server):
    srv = make_server(fault=FaultConfig(latency_s=1.5))
    sleep = SleepRecorder()

    async def main():
        async with client(srv.url, timeout_s=0.15, max_retries=2, sleep=sleep) as llm:
            await llm.next_logprobs([1, 2])

    t0 = time.perf_counter()
    with pytest.raises(LLMError) as ei:
        run(main())
    elapsed = time.perf_counter() - t0
    assert ei.value.kind == "timeout" and ei.value.attempts == 3
    assert len(sleep.delays) == 2
    assert elapsed < 1.2  # 3 x 0.15 s plus overhead, far below the 1.5 s server latency
    assert srv.app.state.faults.calls == 3


def test_malformed_json_is_not_retried(make_server):
    srv = make_server(fault=FaultConfig(malformed_rate=1.0))

    async def main():
        async with client(srv.url) as llm:
            await llm.next_logprobs([1])

    with pytest.raises(LLMError) as ei:
        run(main())
    assert ei.value.kind == "malformed" and ei.value.attempts == 1
    assert srv.app.state.faults.calls == 1


def test_connection_refused(free_port):
    sleep = SleepRecorder()

    async def main():
        async with client(f"http://127.0.0.1:{free_port}", max_retries=2, sleep=sleep) as llm:
            await llm.next_logprobs([1])

    with pytest.raises(LLMError) as ei:
        run(main())
    assert ei.value.kind == "connect" and ei.value.attempts == 3 and len(sleep.delays) == 2


def test_4xx_is_not_retried_and_explains(make_server):
    srv = make_server()  # max_model_len = 64

    async def main():
        async with client(srv.url) as llm:
            await llm.score(list(range(40)), list(range(30)))

    with pytest.raises(LLMError) as ei:
        run(main())
    assert ei.value.kind == "http_4xx" and ei.value.status == 400 and ei.value.attempts == 1
    assert "maximum context length" in str(ei.value)


# -------------------------------------------------------------- concurrency
def _in_flight_run(srv, max_concurrency, n=8):
    async def main():
        async with client(srv.url, max_concurrency=max_concurrency) as llm:
            t0 = time.perf_counter()
            await llm.next_logprobs([1])
            one = time.perf_counter() - t0
            srv.app.state.metrics.in_flight_max = 0
            t0 = time.perf_counter()
            rows = await asyncio.gather(*(llm.next_logprobs([1, i + 1]) for i in range(n)))
            return one, time.perf_counter() - t0, rows

    one, many, rows = run(main())
    assert len(rows) == n
    return one, many, srv.app.state.metrics.in_flight_max


def test_concurrency_limit_respected(make_server):
    srv = make_server(fault=FaultConfig(latency_s=0.2))
    _, _, peak = _in_flight_run(srv, max_concurrency=3)
    assert peak == 3


def test_eight_concurrent_requests_overlap(make_server):
    srv = make_server(fault=FaultConfig(latency_s=0.2))
    one, many, peak = _in_flight_run(srv, max_concurrency=8)
    assert peak == 8  # all 8 were at the server at once
    assert many < 4 * one  # generous; serial would be ~8x


# ------------------------------------------------------------------- secrets
def test_api_key_sent_as_bearer_and_never_leaked(make_server, monkeypatch, caplog):
    secret = "sk-test-SECRET-9f8e7d"
    srv = make_server(api_key=secret, fault=FaultConfig(fail_first=1, status_code=503))
    monkeypatch.setenv("GBOOST_LLM_API_KEY", secret)
    caplog.set_level(logging.DEBUG)

    async def main():
        async with client(srv.url) as llm:
            text = repr(llm) + str(llm)
            await llm.check(srv.backend.vocab_size, [1, 2])
            await llm.next_logprobs([1, 2])  # first attempt 503 -> retried (logged)
            return text

    text = run(main())
    assert secret not in text and "<set>" in text
    assert "retry" in caplog.text and "HTTP Request" in caplog.text  # logging happened ...
    assert secret not in caplog.text  # ... without the key

    monkeypatch.setenv("GBOOST_LLM_API_KEY", "sk-wrong-key-123456")

    async def bad():
        async with client(srv.url) as llm:
            await llm.next_logprobs([1])

    with pytest.raises(LLMError) as ei:
        run(bad())
    assert ei.value.kind == "http_4xx" and ei.value.status == 401
    for s in (str(ei.value), repr(ei.value), caplog.text):
        assert "sk-wrong-key-123456" not in s and secret not in s

    monkeypatch.delenv("GBOOST_LLM_API_KEY")
    with pytest.raises(LLMError) as ei:
        run(bad())
    assert ei.value.status == 401


def test_key_echoed_by_server_is_redacted(monkeypatch):
    secret = "sk-echoed-abcdef"
    monkeypatch.setenv("MY_KEY", secret)
    seen = {}

    def handler(request):
        seen["auth"] = request.headers.get("authorization")
        return httpx.Response(403, json={"error": {"message": f"key {secret} is revoked", "type": "x"}})

    async def main():
        async with client("http://x.invalid/v1", api_key_env="MY_KEY", transport=httpx.MockTransport(handler)) as llm:
            await llm.next_logprobs([1])

    with pytest.raises(LLMError) as ei:
        run(main())
    assert seen["auth"] == f"Bearer {secret}"
    assert secret not in str(ei.value) and "***" in str(ei.value)


# --------------------------------------------------------------- start-up check
def test_check_discovers_model_and_vocab(make_server):
    srv = make_server()
    b = srv.backend

    async def main():
        async with client(srv.url) as llm:
            assert llm.model is None and llm.vocab_size is None
            info = await llm.check(b.vocab_size, b.encode("probe"), probe_text="probe")
            assert llm.model == "fake-bigram" and llm.vocab_size == b.vocab_size
            assert info == {"model": "fake-bigram", "remote_vocab_size": b.vocab_size, "health": "/health",
                            "prompt": "ids", "echo_shift": 0, "served_top_logprobs": K + 1}
            # a smaller local tokenizer than the remote (padded) logits width is fine
            await llm.check(b.vocab_size - 2, b.encode("probe"))

    run(main())


def test_check_vocab_mismatch(make_server):
    srv = make_server()
    b = srv.backend

    async def main(tok_vocab, probe_text=None):
        async with client(srv.url) as llm:
            await llm.check(tok_vocab, b.encode("abc"), probe_text=probe_text)

    with pytest.raises(LLMError) as ei:
        run(main(b.vocab_size + 7))
    assert ei.value.kind == "vocab_mismatch"
    assert str(b.vocab_size) in str(ei.value) and str(b.vocab_size + 7) in str(ei.value)

    with pytest.raises(LLMError) as ei:  # same size, different tokenizer
        run(main(b.vocab_size, probe_text="xyz"))
    assert ei.value.kind == "vocab_mismatch" and "tokenizer" in str(ei.value)


def test_check_unknown_model_and_unreachable(make_server, free_port):
    srv = make_server()

    async def main(url, model):
        async with client(url, model=model, max_retries=1) as llm:
            await llm.check(10, [1])

    with pytest.raises(LLMError) as ei:
        run(main(srv.url, "other-model"))
    assert ei.value.kind == "http_4xx" and "fake-bigram" in str(ei.value)
    with pytest.raises(LLMError) as ei:
        run(main(f"http://127.0.0.1:{free_port}", None))
    assert ei.value.kind == "connect"
