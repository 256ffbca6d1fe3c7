"""The real backend (tiny random SLM / LLM / PRM on one KV pool) under the real search."""
import asyncio

import pytest
import torch

from gboost.llm.local import LocalLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.testing import tiny_engine


def build(kind="judge", mode="exact", num_blocks=512, device="cpu", **cfg_kw):
    eng = tiny_engine({"slm": 1, "llm": 2, "prm": 3 if kind != "judge" else 2}, num_blocks=num_blocks, device=device)
    sched = Scheduler(eng)
    spec = PRMSpec(kind=kind, yes_token="Y")
    cfg = SearchConfig(**{"max_step_tokens": 6, "max_depth": 3, "num_simulations": 4, "temperature": 0.8,
                          "top_p": 1.0, **cfg_kw})
    be = EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched), prm=PRMScorer(eng, sched, spec),
                       options=CollabOptions(collab_mode=mode, max_draft=4))
    return eng, sched, cfg, be


def run(coro):
    return asyncio.run(coro)


@pytest.mark.parametrize("mode", ["exact", pytest.param("speculative", marks=pytest.mark.gpu)])
@pytest.mark.parametrize("method", ["gboost", "slm", "fusion", "rsd", "beam"])
def test_search_completes_and_releases_every_block(method, mode, engine_device):
    # both collab modes where CUDA is (speculative is the default); the CPU suite keeps the exact mode here
    # (speculative steps on CPU: test_speculative_distribution, test_device_placement)
    eng, sched, cfg, be = build(method=method, mode=mode, device=engine_device, beam_width=2, bon_n=2)
    res = run(solve("What is 2+3?", be, cfg))
    assert res.steps, "a chosen path"
    assert all(s["action"] in ("slm", "collab", "llm") for s in res.steps)
    eng.cache.check_refcounts()
    assert eng.cache.live == {}
    assert all(r == 0 for r in eng.cache.blocks.ref)
    if method == "gboost":
        assert {c.action for c in res.root.children} == {"slm", "collab"}
        assert sched.batch_sizes and max(sched.batch_sizes) > 1  # siblings shared forward passes


def test_prm_scoring_computes_only_the_new_step():
    eng, sched, cfg, be = build(kind="token_pair")
    async def go():
        root = await be.root("Q: 1+1?")
        kids = await be.expand(root, "slm", 2)
        await be.score([k.state for k in kids])          # first scores: prompt + step each
        prm_before = be.cost.prm_tokens
        grand = await be.expand(kids[0].state, "slm", 3)
        await be.score([g.state for g in grand])
        new_tokens = sum(len(g.state.prm.token_ids) - len(kids[0].state.prm.token_ids) for g in grand)
        assert be.cost.prm_tokens - prm_before == new_tokens
        for s in [root] + [k.state for k in kids] + [g.state for g in grand]:
            be.release(s)
    run(go())
    eng.cache.check_refcounts()
    assert eng.cache.live == {}


def test_same_seed_same_answer_and_different_seed_differs():
    outs = []
    for seed in (7, 7, 8):
        eng, sched, cfg, be = build(seed=seed, num_simulations=3)
        outs.append(tuple(s["text"] for s in run(solve("Compute 6*7.", be, cfg)).steps))
    assert outs[0] == outs[1]
    assert outs[0] != outs[2]


@pytest.mark.parametrize("kind", ["judge", "token_pair", "two_class"])
def test_prm_kinds_match_a_from_scratch_run(kind):
    eng, sched, cfg, be = build(kind=kind)
    if kind == "two_class":  # the PRM role becomes a two-class head model (Qwen2.5-Math-PRM layout)
        from gboost.prm.heads import build_two_class_prm
        from gboost.scheduler import ModelRunner
        m = eng.role("prm")
        g = torch.Generator().manual_seed(0)
        h = m.config.hidden_size
        sd = dict(m.model.state_dict())
        sd.update({"score.0.weight": torch.randn(h, h, generator=g) / h ** 0.5, "score.0.bias": torch.zeros(h),
                   "score.2.weight": torch.randn(2, h, generator=g), "score.2.bias": torch.zeros(2)})
        m.model = build_two_class_prm(m.config, sd, torch.float32)
        m.runner = ModelRunner(m.key, m.model, eng.cache)
    prm = be.prm
    async def go():
        root = await be.root("2+2?")
        kids = await be.expand(root, "slm", 2)
        rewards = await be.score([k.state for k in kids])
        for k, r in zip(kids, rewards):
            ids = list(k.state.prm.token_ids) + (prm._suffix if kind == "judge" else [])
            s = eng.cache.new_sequence(prm.model.key + "", ids)
            eng.cache.rewind(s, 0)
            logits = prm.model.runner.run([s], "last")[0]
            eng.cache.free(s)
            p = torch.softmax(logits.float(), -1)
            want = {"judge": lambda: p[prm.yes_id],
                    "token_pair": lambda: p[prm.good_id] / (p[prm.good_id] + p[prm.bad_id]),
                    "two_class": lambda: p[1]}[kind]()
            assert abs(r - float(want)) < 1e-5
            assert 0.0 <= r <= 1.0
        for s in [root] + [k.state for k in kids]:
            be.release(s)
    run(go())
    eng.cache.check_refcounts()


def test_exhausted_pool_fails_the_request_cleanly():
    eng, sched, cfg, be = build(num_blocks=6)
    with pytest.raises(Exception, match="exhausted"):
        run(solve("A question long enough to need several blocks " * 3, be, cfg))
    eng.cache.check_refcounts()
    assert all(r == 0 for r in eng.cache.blocks.ref)


def test_concurrent_requests_get_their_own_measured_cost():
    eng, sched, cfg, be = build(method="gboost", num_simulations=2)
    async def go():
        return await asyncio.gather(solve("What is 2+3?", be, cfg), solve("And 4*5?", be, cfg))
    a, b = run(go())
    for k in ("slm_tokens", "llm_tokens", "prm_tokens", "prefix_cache_tokens"):
        assert getattr(a.cost, k) + getattr(b.cost, k) == getattr(be.cost, k), k
    for r in (a, b):
        assert r.cost.slm_tokens > sum(len(s["text"]) for s in r.steps)  # prompt prefill is counted
        assert r.cost.llm_tokens > 0 and r.cost.prm_tokens > 0
        assert r.cost.llm_calls >= 1 and r.cost.wall_s["total"] > 0
    assert max(sched.batch_sizes) > 2   # the two requests' frontiers shared forward passes


@pytest.mark.parametrize("delay", [0.02, 0.08, 0.2])
def test_cancelled_request_releases_every_block(delay):
    eng, sched, cfg, be = build(method="gboost", num_simulations=20)
    async def go():
        t = asyncio.create_task(solve("What is 2+3?", be, cfg))
        await asyncio.sleep(delay)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t
        await asyncio.sleep(0.05)  # let the scheduler finish a batch already handed to its thread
    run(go())
    eng.cache.check_refcounts()
    assert eng.cache.live == {} and all(r == 0 for r in eng.cache.blocks.ref)


def test_request_config_overrides_the_backends_own():
    """solve(q, backend, cfg) samples with cfg even when the backend was built with another
    config (one server, many per-request settings); counters and KV stay shared."""
    def answer(build_kw, request_kw):
        eng, sched, cfg, be = build(**build_kw)
        res = run(solve("What is 2+3?", be, cfg.replace(**request_kw)))
        assert be.counts.live_states == 0 and eng.cache.live == {}
        eng.cache.check_refcounts()
        return [(s["text"], s["action"]) for s in res.steps], be
    want, _ = answer({"seed": 5, "temperature": 1.3}, {})
    got, be = answer({"seed": 0, "temperature": 0.8}, {"seed": 5, "temperature": 1.3})
    assert got == want
    assert be.counts.llm_rounds > 0                                   # the request view's LLM calls counted here
    other, _ = answer({"seed": 0, "temperature": 0.8}, {})
    assert other != want                                       # the override changed what was sampled


@pytest.mark.parametrize("mode", ["exact", "speculative"])
@pytest.mark.parametrize("method,extra", [("gboost", {}), ("fusion", {}), ("llm", {}),
                                          ("rsd", {"rsd_threshold": 1.0, "rsd_chains": 3})])
@pytest.mark.parametrize("budget", [1, 4, 9])
def test_the_llm_token_budget_holds_exactly(mode, method, extra, budget):
    """Whatever the steps cost (drafts rejected, concurrent chains, a step cut mid-way), the LLM
    generates at most max_llm_tokens; a method that always asks the LLM spends all of it (steps
    are 6 tokens, the search long enough); the context it read first is counted apart."""
    eng, sched, cfg, be = build(method=method, mode=mode, max_llm_tokens=budget, **extra)
    res = run(solve("What is 2+3?", be, cfg))
    c = res.cost
    assert c.llm_generated_tokens <= budget and c.llm_context_tokens >= 0
    if method in ("fusion", "llm", "rsd"):
        assert c.llm_generated_tokens == budget
    eng.cache.check_refcounts()
    assert eng.cache.live == {}


def test_a_gate_that_never_opens_spends_no_llm_tokens():
    eng, sched, cfg, be = build(method="rsd", rsd_threshold=0.0, max_llm_tokens=50)
    res = run(solve("What is 2+3?", be, cfg))
    assert res.cost.llm_tokens == res.cost.llm_calls == 0 and res.stats["rsd_regenerated"] == 0
