"""Proxy tuning (fusion_rule="proxy") in the real backend: the SLM's base model resident on the
shared pool beside the SLM and the LLM.  The step distribution itself (exact and speculative
modes) is checked statistically in test_speculative_distribution.py."""
import asyncio

import pytest
import torch

from gboost.llm.local import LocalLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.api import solve
from gboost.search.config import ConfigError, SearchConfig
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.stack import build_stack
from gboost.testing import byte_tokenizer, tiny_engine

ALPHA = 0.7


def build(mode="exact", **cfg_kw):
    eng = tiny_engine({"slm": 1, "llm": 2, "prm": 2, "base": 4}, num_blocks=512)
    sched = Scheduler(eng)
    cfg = SearchConfig(**{"fusion_rule": "proxy", "fusion_alpha": ALPHA, "max_step_tokens": 5,
                          "temperature": 0.8, "top_p": 1.0, "step_delimiter": "\n\n\n\n", **cfg_kw})
    be = EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched), prm=PRMScorer(eng, sched, PRMSpec(yes_token="Y")),
                       base=LocalLLM(eng, sched, role="base", charge_as="base_tokens"),
                       options=CollabOptions(collab_mode=mode, max_draft=3))
    return eng, be


def last_logits(eng, role, ids):
    """A from-scratch forward of one model on ids (fresh sequence, nothing reused)."""
    m = eng.role(role)
    s = eng.cache.new_sequence(m.key + "", list(ids))
    eng.cache.rewind(s, 0)
    with torch.inference_mode():
        out = m.runner.run([s], "last")[0].float()
    eng.cache.free(s)
    return out


def test_exact_collab_samples_from_llm_plus_alpha_times_slm_minus_base():
    eng, be = build()
    seen = []
    sample = be.sample
    be.sample = lambda z, gen, t: (seen.append(z.clone()), sample(z, gen, t))[1]

    async def go():
        root = await be.root("2+2?")
        (kid,) = await be.expand(root, "collab", 1)
        return root, kid
    root, kid = asyncio.run(go())
    prompt, toks = list(root.slm.token_ids), list(kid.token_ids)
    assert len(seen) == len(toks) >= 1
    for j, z in enumerate(seen):
        ctx = prompt + toks[:j]
        ls, ll, lb = (last_logits(eng, r, ctx) for r in ("slm", "llm", "base"))
        want = torch.log_softmax(ll + ALPHA * (ls - lb), -1)
        torch.testing.assert_close(z, want, atol=2e-4, rtol=0)
        # and it is not the log-linear mixture (the test can tell the rules apart)
        loglin = torch.log_softmax((1 - ALPHA) * torch.log_softmax(ls, -1) + ALPHA * torch.log_softmax(ll, -1), -1)
        assert (z - loglin).abs().max() > 1e-2
    assert be.cost.base_tokens >= len(prompt) and be.cost.llm_tokens >= len(prompt)
    be.release(kid.state)
    be.release(root)
    assert eng.cache.live == {}   # the base's sessions went back with the last state
    eng.cache.check_refcounts()


@pytest.mark.parametrize("mode", ["exact", "speculative"])
def test_proxy_search_completes_charges_the_base_and_releases_every_block(mode):
    eng, be = build(mode, method="gboost", num_simulations=3, max_depth=2)
    res = asyncio.run(solve("What is 2+3?", be, be.cfg))
    assert res.steps and "collab" in {c.action for c in res.root.children}
    assert res.cost.base_tokens > 0 and res.cost.to_dict()["base_tokens"] == res.cost.base_tokens
    assert eng.cache.live == {}
    assert all(r == 0 for r in eng.cache.blocks.ref)


def test_proxy_without_a_base_model_is_refused_up_front():
    eng = tiny_engine({"slm": 1, "llm": 2})
    sched = Scheduler(eng)
    be = EngineExecutor(eng, sched, SearchConfig(), llm=LocalLLM(eng, sched))
    with pytest.raises(ConfigError, match="base model.*--base"):
        be.with_config(SearchConfig(fusion_rule="proxy"))
    with pytest.raises(ConfigError, match="base model"):
        asyncio.run(solve("2+2?", be, SearchConfig(fusion_rule="proxy", method="fusion")))
    assert eng.cache.live == {}


def test_a_base_model_with_another_vocabulary_is_refused():
    eng = tiny_engine({"slm": 1, "llm": 2, "base": 4})
    other = byte_tokenizer()
    other.backend.add_tokens(["<another>"])
    eng.role("base").tokenizer = other
    assert other.vocab_size == eng.role("slm").tokenizer.vocab_size + 1
    with pytest.raises(ValueError, match="base model .* different vocabularies"):
        eng.check_vocabularies()


def test_a_base_model_with_another_logit_width_is_refused():
    from gboost.testing import tiny_config
    eng = tiny_engine({"slm": 1, "base": 4}, configs={"base": tiny_config(vocab=264)})
    with pytest.raises(ValueError, match="260 logits.*264"):
        eng.check_vocabularies()


def test_methods_that_never_fuse_run_without_a_base():
    eng = tiny_engine({"slm": 1, "llm": 2})
    sched = Scheduler(eng)
    be = EngineExecutor(eng, sched, SearchConfig(), llm=LocalLLM(eng, sched))
    for cfg in (SearchConfig(fusion_rule="proxy", method="slm"), SearchConfig(fusion_rule="proxy", method="llm"),
                SearchConfig(fusion_rule="proxy", collab_width=0)):
        be.with_config(cfg)  # no error: nothing is fused


def test_stack_refuses_a_remote_base():
    with pytest.raises(ValueError, match="base model must be a local checkpoint"):
        asyncio.run(build_stack(SearchConfig(), slm="x", llm=None, base="http://127.0.0.1:9/v1"))
