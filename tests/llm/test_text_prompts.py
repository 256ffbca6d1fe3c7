"""A completions server that refuses token-id prompts and keys top_logprobs by token text, as
llama-cpp-python's does (tests/server/_llamacpp_stub.py, in front of gboost's app on a tiny
model): the probe chooses text, solves succeed, nothing is retried in vain; text-mode rows equal
the id-mode rows of the same server; string-keyed rows fuse as their id-keyed originals."""
import asyncio
import json

import httpx
import pytest
import torch

from _llamacpp_stub import LLAMA_500, LlamaCppLike
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.collab.fusion import fused_logp
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.llm.base import LLMError
from gboost.llm.remote import RemoteLLM
from gboost.llm.tokstrings import TokenStrings, token_bytes
from gboost.scheduler import Scheduler
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import byte_tokenizer, tiny_engine

pytestmark = pytest.mark.timeout(300)

LLAMA_500_BODY = LLAMA_500.format(n=3, ids=[1, 2])


async def no_sleep(_):
    await asyncio.sleep(0)


@pytest.fixture(scope="module")
def llama():
    eng = tiny_engine({"slm": 2})  # the "general LLM": tiny model seed 2
    app = create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny-llm"))
    stub = LlamaCppLike(app, byte_tokenizer())
    with BackgroundServer(stub) as srv:
        srv.stub, srv.inner = stub, app
        yield srv


def remote(url, **kw):
    kw.setdefault("prompt", "auto")
    return RemoteLLM(url + "/v1", tokenizer=byte_tokenizer(), top_logprobs=5, timeout_s=30, sleep=no_sleep, **kw)


async def checked(llm):
    tok = byte_tokenizer()
    probe = tok.encode("Step 1: 2 + 3 = 5.")
    return await llm.check(tok.vocab_size, probe, tok.decode(probe))


def test_the_probe_chooses_text_once_and_never_retries_a_refused_prompt(llama):
    llama.stub.calls.update(ids_refused=0)

    async def main():
        async with remote(llama.url) as llm:
            info = await checked(llm)
            assert info["prompt"] == "text" and info["echo_shift"] == 1
            assert "token ids refused: field 'prompt', HTTP 500" in llm.prompt_note
            assert llm.stats["retries"] == 0
        async with remote(llama.url, prompt="ids", max_retries=3) as llm:
            with pytest.raises(LLMError) as e:
                await checked(llm)
            assert e.value.kind == "http_4xx" and e.value.status == 500 and e.value.field == "prompt"
            assert e.value.attempts == 1 and "refused field 'prompt'" in str(e.value)
    asyncio.run(asyncio.wait_for(main(), 60))
    assert llama.stub.calls["ids_refused"] == 2  # one per probe: no retry of a validation error


def test_text_rows_equal_the_id_rows_of_the_same_model(llama):
    """score() in text mode against the stub == score() in id mode against the app behind it."""
    tok = byte_tokenizer()
    with BackgroundServer(llama.inner) as plain:
        async def main():
            async with remote(llama.url) as text, remote(plain.url, prompt="ids") as ids:
                await checked(text)
                await checked(ids)
                text.text_echo = True
                prefix, draft = tok.encode("Q: 2+3? A: 2"), tok.encode("+3=5")
                a, b = await text.score(prefix, draft), await ids.score(prefix, draft)
                assert len(a) == len(b) == len(draft) + 1 and text.stats["text_extra_requests"] == 0
                for ra, rb in zip(a, b):
                    da, db = ra.as_dict(), rb.as_dict()
                    assert set(da) <= set(db) and len(da) >= len(db) - 1 - text.stats["ambiguous"]
                    for i, v in da.items():
                        assert v == pytest.approx(db[i], abs=1e-5)
                n1, n2 = await text.next_logprobs(prefix), await ids.next_logprobs(prefix)
                assert n1.ids[0] == n2.ids[0]
        asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("method,mode", [("fusion", "speculative"), ("gboost", "exact"), ("gboost", "speculative")])
def test_solves_succeed_against_a_server_that_refuses_ids(llama, method, mode):
    cfg = SearchConfig(method=method, num_simulations=3, max_depth=2, max_step_tokens=6, temperature=0.7, seed=1)

    async def main():
        llm = remote(llama.url)
        await checked(llm)
        eng = tiny_engine({"slm": 1, "prm": 3})
        sched = Scheduler(eng)
        ex = EngineExecutor(eng, sched, cfg, llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair", yes_token="Y")),
                            options=CollabOptions(collab_mode=mode, max_draft=4, on_llm_fault="fail"))
        try:
            res = await solve("What is 2+3?", ex, cfg)
        finally:
            await llm.aclose()
            sched.close()
        return res, llm.stats
    res, stats = asyncio.run(asyncio.wait_for(main(), 240))
    assert res.cost.llm_calls > 0 and not res.cost.llm_faults and stats["retries"] == 0


# ------------------------------------------------ string-keyed rows against id-keyed ones
def _tokenizer():
    """Byte-level BPE with one merge (" " + 0xE4: a token that reads " " with bytes ignored)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from gboost.models.tokenizer import Tokenizer as T
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    vocab["Ġä"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[("Ġ", "ä")]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>"])
    return T(tok, eos_token_ids=[257])


def _serve(rows_json: str):
    def handler(request):
        return httpx.Response(200, content=rows_json.encode(), headers={"content-type": "application/json"})
    return httpx.MockTransport(handler)


def _row_json(pairs):
    """A completions body whose one top_logprobs entry is written key by key (repeats kept)."""
    entry = "{" + ", ".join(f"{json.dumps(k)}: {v!r}" for k, v in pairs) + "}"
    return ('{"choices": [{"text": "x", "logprobs": {"tokens": ["x"], "token_logprobs": [-1.0], '
            f'"top_logprobs": [{entry}]}}}}]}}')


async def _next_row(tok, body):
    async with RemoteLLM("http://stub/v1", tokenizer=tok, vocab_size=tok.vocab_size, top_logprobs=8,
                         transport=_serve(body), prompt="text") as llm:
        return await llm.next_logprobs(tok.encode("ab")), dict(llm.stats)


def _fused(rows, V, seed=0):
    slm = torch.randn(1, V, generator=torch.Generator().manual_seed(seed)) * 3
    return fused_logp(slm, rows, 0.5, None, 8)


def test_string_keyed_rows_fuse_as_their_id_keyed_originals():
    tok = _tokenizer()
    V, raw, space, merged = tok.vocab_size, token_bytes(tok), tok.encode(" ")[0], tok.encode(" \xe4".encode(
        "latin-1").decode("latin-1"))
    byte_e4 = raw.index(b"\xe4")
    assert raw[256] == b" \xe4" and raw[space] == b" "
    truth = {tok.encode("a")[0]: -0.4, space: -1.3, byte_e4: -2.2, raw.index(b"\xb8"): -2.9, 257: -3.5}
    from gboost.llm.base import TokenLogprobs
    ref = TokenLogprobs(torch.tensor(list(truth)), torch.tensor(list(truth.values())))
    # vLLM/OpenAI spelling: partial characters as "bytes:\\x..", whole ones as text
    ts = TokenStrings(tok)
    vllm = [(raw[i].decode() if i != 257 and raw[i].decode("utf-8", "ignore") == raw[i].decode("utf-8", "replace")
             else ("<|endoftext|>" if i == 257 else "bytes:" + "".join(f"\\x{x:02x}" for x in raw[i])), v)
            for i, v in truth.items()]
    row, stats = asyncio.run(_next_row(tok, _row_json(vllm)))
    assert row.as_dict() == pytest.approx(truth) and stats["ambiguous"] == 0
    torch.testing.assert_close(_fused([row], V), _fused([ref], V))
    # llama-cpp-python's spelling: " " is also how the merged " \xe4" reads; the whole token wins.
    # "" is every partial character and the control token: those entries are dropped, never guessed.
    llama = [(raw[i].decode("utf-8", "ignore") if i != 257 else "", v) for i, v in truth.items()]
    assert [k for k, _ in llama].count("") == 3  # a repeated key, as a C++ server may write it
    row, stats = asyncio.run(_next_row(tok, _row_json(llama)))
    kept = {i: v for i, v in truth.items() if raw[i].decode("utf-8", "ignore") != "" and i != 257}
    assert row.as_dict() == pytest.approx(kept) and stats["ambiguous"] == 3 and stats["by_whole_text"] == 1
    ref_kept = TokenLogprobs(torch.tensor(list(kept)), torch.tensor(list(kept.values())))
    torch.testing.assert_close(_fused([row], V), _fused([ref_kept], V))
    assert ts.ids(" ") == {space, merged[0] if len(merged) == 1 else 256}


def test_a_split_that_re_encoding_merges_takes_each_row_by_the_rule(llama):
    """The SLM's bytes of 'ки' re-encode to one added token: the draft positions inside it have no
    echo row of their own, so each gets a next-token request; every row j is the text-mode row
    after ids[:P+j] (TextPrompts' rule), as exact text-mode fusion would ask for it."""
    tok = byte_tokenizer()
    prefix = tok.encode("a: ")
    from gboost.models.gguf_tokenizer import bytes_to_unicode
    split = [tok.token_to_id(bytes_to_unicode()[b]) for b in "ки".encode()]
    assert tok.encode(tok.decode(split)) == [258] and len(split) == 4
    draft = split + tok.encode(" 5")

    async def main():
        async with remote(llama.url) as llm:
            await checked(llm)
            llm.text_echo = True  # the probe's timing chooses; here the echo path is the one under test
            rows = await llm.score(prefix, draft)
            assert llm.stats["text_extra_requests"] == 3  # inside the merged token (the start lines up)
            for j, row in enumerate(rows):
                want = (await llm.next_logprobs(prefix + draft[:j])).as_dict()
                got = row.as_dict()  # an echo row and a generated one differ in the entries llama adds
                assert max(got, key=got.get) == max(want, key=want.get)
                assert {i: got[i] for i in set(got) & set(want)} == pytest.approx(
                    {i: want[i] for i in set(got) & set(want)}, abs=1e-5)
    asyncio.run(asyncio.wait_for(main(), 60))


@pytest.mark.parametrize("status,body,retried", [
    (500, {"error": {"message": LLAMA_500_BODY, "type": "internal_server_error"}}, False),
    (422, {"detail": [{"loc": ["body", "prompt"], "msg": "Input should be a valid string"}]}, False),
    (400, {"error": {"message": "bad request", "type": "invalid_request_error"}}, False),
    (503, {"error": {"message": "overloaded", "type": "server_error"}}, True),
])
def test_only_transient_failures_are_retried_and_a_refused_field_is_named(status, body, retried):
    calls = []

    def handler(request):
        calls.append(1)
        return httpx.Response(status, json=body)

    async def main():
        async with RemoteLLM("http://stub/v1", top_logprobs=2, max_retries=2, sleep=no_sleep,
                             transport=httpx.MockTransport(handler)) as llm:
            with pytest.raises(LLMError) as e:
                await llm.next_logprobs([1, 2])
            return e.value
    err = asyncio.run(main())
    assert len(calls) == (3 if retried else 1)
    assert (err.kind == "http_5xx") == retried
    if status in (500, 422):
        assert err.field == "prompt" and "field 'prompt'" in str(err) and "\n" not in str(err)
