"""The naive implementation on plain transformers (gboost.bench.naive) against the engine, driven by
the same search code on the same tiny checkpoints: greedy and fp32, they must choose the same steps
and the same answers, and build the same trees (issue 12: same answers, only speed may differ)."""
import asyncio

import pytest

pytest.importorskip("transformers")

from gboost.bench import load_naive, write_pair  # noqa: E402
from gboost.collab.executor import CollabOptions  # noqa: E402
from gboost.search.api import solve  # noqa: E402
from gboost.search.config import SearchConfig  # noqa: E402
from gboost.stack import build_stack  # noqa: E402

QUESTIONS = ["What is 2 + 3?", "Tom has 4 apples and buys 5 more. How many apples now?"]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("pair")
    # an LLM that mostly agrees with the SLM: speculative drafts are both accepted and rejected
    slm, llm = write_pair(d, hidden=128, layers=2, heads=4, kv_heads=2, extra_layers=2, scale=0.25,
                          max_positions=1024)
    naive = load_naive()
    return str(slm), str(llm), naive, naive.load_hf(str(slm)), naive.load_hf(str(llm))


def run_both(pair, cfg, mode):
    slm, llm, naive_mod, hf_slm, hf_llm = pair

    async def go():
        stack = await build_stack(cfg, slm=slm, llm=llm, dtype="float32", kv_memory_gb=0.05,
                                  options=CollabOptions(collab_mode=mode, max_draft=4))
        try:
            tok = stack.engine.role("slm").tokenizer
            nv = naive_mod.NaiveExecutor(tok, cfg, hf_slm, llm=hf_llm, prm=hf_llm, prm_spec=stack.executor.prm.spec)
            out = [(await solve(q, stack.executor, cfg), await solve(q, nv, cfg)) for q in QUESTIONS]
            stack.engine.cache.check_refcounts()
            assert nv.live_states == 0 and stack.executor.counts.live_states == 0
            be = stack.executor
            if mode == "speculative":  # both branches of verification ran, and still matched
                assert 0 < be.counts.draft_accepted < be.counts.draft_proposed
            return out
        finally:
            await stack.aclose()
    return asyncio.run(go())


def tree(res):
    return [(n.depth, n.action, n.text, n.terminal) for n in res.root.iter_nodes()]


def rewards(res):
    return [n.reward for n in res.root.iter_nodes() if not n.is_root and n.reward is not None]


@pytest.mark.parametrize("method,mode", [("gboost", "speculative"), ("gboost", "exact"), ("fusion", "speculative")])
def test_naive_and_engine_choose_the_same_steps_and_answers(pair, method, mode):
    cfg = SearchConfig(method=method, temperature=0.0, top_p=1.0, max_step_tokens=8, max_depth=3,
                       num_simulations=4, seed=0)
    results = run_both(pair, cfg, mode)
    for eng, nv in results:
        assert [(s["text"], s["action"]) for s in eng.steps] == [(s["text"], s["action"]) for s in nv.steps]
        assert eng.answer == nv.answer
        assert tree(eng) == tree(nv)                      # every node, not only the chosen path
        assert rewards(eng) == pytest.approx(rewards(nv), abs=1e-4)
        assert eng.steps
        if method == "gboost":                            # both actions were really compared
            assert {c.action for c in eng.root.children} == {"slm", "collab"}
        else:
            assert {s["action"] for s in eng.steps} == {"collab"}
        # the naive one recomputes every prefix: more tokens computed for the same answer
        computed = [r.cost.slm_tokens + r.cost.llm_tokens + r.cost.prm_tokens for r in (eng, nv)]
        assert computed[1] > computed[0]
    # fused steps written from a node below the root (a prefix holding earlier steps) agreed too
    assert any(n.action == "collab" and n.depth >= 2 for eng, _ in results for n in eng.root.iter_nodes())
