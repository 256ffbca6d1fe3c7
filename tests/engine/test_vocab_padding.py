"""Pairs with one tokenizer whose logit widths differ by padding (as Qwen2.5 0.5B-3B, 151936 rows, and
7B+, 152064): fusion runs over the shared ids and equals the fusion of unpadded models, locally and
over HTTP, both ways round; pairs whose tokenizers really differ are refused, naming a token."""
import asyncio
import json

import pytest
import torch
from tokenizers import Tokenizer as HFTokenizer, decoders, models, pre_tokenizers

from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.collab.fusion import fused_logp
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.engine import Engine, ResidentModel
from gboost.llm.base import LLMError, TokenLogprobs
from gboost.llm.local import LocalLLM
from gboost.llm.remote import RemoteLLM
from gboost.models.qwen2_llama import build_model
from gboost.scheduler import Scheduler
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.server.app import create_app
from gboost.server.engine_backend import EngineCompletionBackend
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import byte_tokenizer, tiny_config, tiny_model, write_tiny_checkpoint

pytestmark = pytest.mark.timeout(300)

V, PAD = 260, 128  # the byte tokenizer has 259 tokens; the tiny models 260 logits, padded ones 388


def padded(seed: int, loud: bool = True):
    """tiny_model(seed) with PAD more logit rows: the same model on ids < V, and padding rows whose
    large logits would win every argmax if they were not left out (``loud``), or zero rows as real
    checkpoints pad (a served model must still rank real tokens first in its top-k)."""
    narrow = tiny_model(tiny_config(), seed)
    wide = build_model(tiny_config(vocab=V + PAD), None, torch.float32)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, w in wide.state_dict().items():
            src = narrow.state_dict()[name]
            if src.shape == w.shape:
                w.copy_(src)
            else:  # embed_tokens / lm_head: V real rows, then padding
                w[:V].copy_(src)
                scale = (50.0 if loud else 0.0) if "lm_head" in name else 0.02
                w[V:].copy_(torch.randn(PAD, w.shape[1], generator=g) * scale)
    return wide


def engine(slm, llm=None, prm=3, loud=True):
    """roles from (seed, padded?) pairs; one tokenizer for all."""
    tok, ms, roles = byte_tokenizer(), {}, {}
    for role, spec in (("slm", slm), ("llm", llm), ("prm", (prm, False))):
        if spec is None:
            continue
        seed, wide = spec
        key = f"tiny-{seed}{'-padded' if wide else ''}"
        if key not in ms:
            model = padded(seed, loud) if wide else tiny_model(tiny_config(), seed)
            ms[key] = ResidentModel(key, tiny_config(vocab=V + PAD if wide else V), model, tok, None, [256])
        roles[role] = key
    eng = Engine(list(ms.values()), roles, block_size=16, num_blocks=512, dtype=torch.float32)
    eng.check_vocabularies()
    return eng


def cfg(**kw):
    return SearchConfig(**{"method": "fusion", "max_step_tokens": 6, "max_depth": 2, "temperature": 0.0,
                           "top_p": 1.0, **kw})


def steps(eng, llm_factory, c, mode="speculative"):
    async def main():
        sched = Scheduler(eng)
        llm = await llm_factory(eng, sched)
        ex = EngineExecutor(eng, sched, c, llm=llm, prm=PRMScorer(eng, sched, PRMSpec("token_pair", yes_token="Y")),
                            options=CollabOptions(collab_mode=mode, max_draft=3))
        try:
            res = await solve("2+2=?", ex, c)
        finally:
            await llm.aclose()
            sched.close()
        assert eng.cache.live == {} and all(r == 0 for r in eng.cache.blocks.ref)
        return [s["text"] for s in res.steps], res
    return asyncio.run(main())


async def local(eng, sched):
    return LocalLLM(eng, sched)


def test_fused_rows_are_the_fusion_over_the_shared_ids():
    g = torch.Generator().manual_seed(0)
    narrow, wide = torch.randn(3, V, generator=g) * 3, torch.randn(3, V + PAD, generator=g) * 3

    def full(x):
        return [TokenLogprobs(torch.arange(x.shape[-1]), torch.log_softmax(r, -1), full=True) for r in x]

    def reference(slm, llm, a):
        ls, ll = torch.log_softmax(slm[:, :V], -1), torch.log_softmax(llm[:, :V], -1)
        return torch.log_softmax((1 - a) * ls + a * ll, -1)
    for slm, llm in ((narrow, wide), (wide, narrow)):
        for a in (0.0, 0.5, 1.0):
            got = fused_logp(slm, full(llm), a)
            assert got.shape == (3, V)  # the padded ids are not in the fused distribution: probability 0
            torch.testing.assert_close(got, reference(slm, llm, a), rtol=0, atol=1e-5)
    # proxy: the base (the SLM's width) is cut to the shared ids too
    base = torch.randn(3, V + PAD, generator=g)
    got = fused_logp(wide, full(narrow), 0.5, full(base))
    want = torch.log_softmax(torch.log_softmax(narrow, -1)
                             + 0.5 * (torch.log_softmax(wide[:, :V], -1) - torch.log_softmax(base[:, :V], -1)), -1)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("mode", ["exact", "speculative"])
@pytest.mark.parametrize("slm_wide,llm_wide", [(False, True), (True, False)])
def test_local_padded_pair_fuses_like_the_unpadded_pair(mode, slm_wide, llm_wide):
    want, _ = steps(engine((1, False), (2, False)), local, cfg(), mode)
    eng = engine((1, slm_wide), (2, llm_wide))
    wide = eng.role("slm" if slm_wide else "llm").model
    w, h = wide.lm_head.weight, torch.randn(64, generator=torch.Generator().manual_seed(0))
    assert (w[V:] @ h).max() > (w[:V] @ h).max()  # the padding would win the argmax were it not left out
    got, res = steps(eng, local, cfg(), mode)
    assert got == want and len(got) == 2 and not res.cost.llm_faults
    if slm_wide:  # the SLM's own steps never write a padding id either
        assert steps(eng, local, cfg(method="slm"))[0] == steps(engine((1, False), (2, False)), local,
                                                                cfg(method="slm"))[0]


@pytest.fixture(scope="module")
def served():
    """gboost serve on the tiny LLM (seed 2), unpadded and padded: {wide?: server}."""
    out = {}
    for wide in (False, True):
        eng = engine((2, wide), loud=False)
        out[wide] = BackgroundServer(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="tiny-llm"),
                                                max_logprobs=V + PAD)).start()
    yield out
    for srv in out.values():
        srv.stop()


@pytest.mark.parametrize("slm_wide,llm_wide", [(False, True), (True, False)])
def test_remote_padded_pair_fuses_like_the_unpadded_pair(served, slm_wide, llm_wide):
    want, _ = steps(engine((1, False), (2, False)), local, cfg())
    eng = engine((1, slm_wide))
    tok = eng.role("slm").tokenizer

    async def remote(eng, sched):
        # as build_stack does: the tokenizer's size for the check, the SLM's width for fusion
        llm = RemoteLLM(served[llm_wide].url, top_logprobs=V + PAD, vocab_size=eng.role("slm").config.vocab_size,
                        timeout_s=30)
        probe = tok.encode("Step 1: 2 + 3 = 5.")
        info = await llm.check(tok.vocab_size, probe, tok.decode(probe))
        assert info["remote_vocab_size"] == (V + PAD if llm_wide else V) and llm.vocab_size == V
        return llm
    got, res = steps(eng, remote, cfg())
    assert got == want and not res.cost.llm_faults


def test_build_stack_accepts_a_padded_slm_with_a_narrower_endpoint(served, tmp_path):
    from gboost.stack import build_stack
    slm = write_tiny_checkpoint(tmp_path / "slm", seed=1, cfg=tiny_config(vocab=V + PAD))

    async def main():
        st = await build_stack(cfg(), slm=str(slm), llm=served[False].url + "/v1", prm="none", dtype="float32",
                               kv_memory_gb=0.05, llm_kind="completions")
        try:
            assert st.llm.remote_vocab_size == V and st.llm.vocab_size == V and st.executor.shared_width == V
            res = await solve("2+2=?", st.executor, cfg(score_baselines=False))
            assert len(res.steps) == 2 and not res.cost.llm_faults
        finally:
            await st.aclose()
    asyncio.run(main())


def reordered_tokenizer():
    """A byte-level tokenizer with the same tokens as byte_tokenizer's, in reverse byte order."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet(), reverse=True)
    tok = HFTokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(["<|endoftext|>", "<extra_0>"])
    tok.add_tokens(["\u043a\u0438"])
    return tok


def test_tokenizers_that_differ_are_refused_naming_a_token(tmp_path):
    slm = write_tiny_checkpoint(tmp_path / "slm", seed=1)
    llm = write_tiny_checkpoint(tmp_path / "llm", seed=2, cfg=tiny_config(vocab=V + PAD))
    Engine.from_pretrained(str(slm), str(llm), dtype="float32", num_blocks=64)  # padding alone is fine
    reordered_tokenizer().save(str(llm / "tokenizer.json"))
    with pytest.raises(ValueError, match=r"different vocabularies: token '.' is id 0 in the SLM's and id 255 in"):
        Engine.from_pretrained(str(slm), str(llm), dtype="float32", num_blocks=64)


def test_an_endpoint_with_another_tokenizer_is_refused(tmp_path):
    from gboost.models.tokenizer import Tokenizer
    eng = engine((2, True), loud=False)
    other = Tokenizer(reordered_tokenizer(), eos_token_ids=[256])
    for m in eng.models.values():
        m.tokenizer = other
    tok = byte_tokenizer()
    with BackgroundServer(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="x"))) as srv:
        async def main():
            async with RemoteLLM(srv.url, vocab_size=V, timeout_s=30) as llm:
                probe = tok.encode("Step 1: 2 + 3 = 5.")
                await llm.check(tok.vocab_size, probe, tok.decode(probe))
        with pytest.raises(LLMError, match="do not share a tokenizer") as e:
            asyncio.run(main())
    assert e.value.kind == "vocab_mismatch"
    json.dumps(str(e.value))  # one printable line
