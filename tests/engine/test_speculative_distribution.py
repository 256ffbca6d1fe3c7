"""Speculative collaborative steps sample exactly what token-by-token fusion samples.

The models are bigram tables (logits depend on the last token only) behind the real backend
code paths, so tens of thousands of steps are cheap and the exact step distribution is known
in closed form. A second test runs the same check, smaller, with tiny transformer models.
"""
import asyncio

import pytest
import torch

from gboost.llm.base import TokenLogprobs
from gboost.llm.local import LocalLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.config import SearchConfig
from gboost.testing import tiny_engine

V, EOS = 260, 256
LIVE = [60, 61, 62, 63, EOS]   # the only tokens with mass ('\n' never appears: steps end by length or EOS)
T, ALPHA, STEP = 0.9, 0.5, 2


def bigram(seed):
    g = torch.Generator().manual_seed(seed)
    tab = torch.full((V, V), -1e30)  # exp gives exactly 0; -inf (and denormal results) take a slow CPU path
    tab[:, LIVE] = torch.randn(V, len(LIVE), generator=g) * 1.5
    return tab


SLM, LLM, BASE = bigram(11), bigram(12), bigram(13)


class TableScheduler:
    """Stands in for the model scheduler: the SLM's logits given the last token."""
    async def forward(self, seq, want="last"):
        await asyncio.sleep(0)
        return SLM[seq.token_ids[-1]].clone()


class TableLLM:
    vocab_size = V
    charges_itself = False
    ids = torch.arange(V)

    def __init__(self, table=LLM):
        self.table, self.calls = table, 0

    def row(self, t):
        return TokenLogprobs(self.ids, torch.log_softmax(self.table[t], -1), full=True)

    async def next_logprobs(self, token_ids):
        self.calls += 1
        await asyncio.sleep(0)
        return self.row(token_ids[-1])

    async def score(self, prefix, draft):
        self.calls += 1
        await asyncio.sleep(0)
        ctx = list(prefix) + list(draft)
        return [self.row(ctx[len(prefix) - 1 + j]) for j in range(len(draft) + 1)]

    async def aclose(self):
        pass


def fused(t, rule="loglinear"):
    if rule == "proxy":  # proxy tuning: the LLM's logits shifted by the SLM's offset from its base
        z = LLM[t] + ALPHA * (SLM[t] - BASE[t])
    else:
        z = (1 - ALPHA) * torch.log_softmax(SLM[t], -1) + ALPHA * torch.log_softmax(LLM[t], -1)
    return torch.softmax(z / T, -1)


def exact_distribution(last, rule="loglinear", step=STEP):
    dist = {}
    def walk(prefix, prev, prob):
        if prefix and (prefix[-1] == EOS or len(prefix) == step):
            dist[tuple(prefix)] = dist.get(tuple(prefix), 0.0) + prob
            return
        p = fused(prev, rule)
        for t in LIVE:
            walk(prefix + [t], t, prob * float(p[t]))
    walk([], last, 1.0)
    return dist


def sample_steps(backend, engine, n, prompt, action="collab"):
    async def go():
        root = await backend.root(prompt)
        outs = []
        for lo in range(0, n, 2000):
            kids = await backend.expand(root, action, min(2000, n - lo))
            outs += [tuple(k.token_ids) for k in kids]
            for k in kids:
                backend.release(k.state)
        backend.release(root)
        return outs
    return asyncio.run(go())


def tv(samples, dist):
    emp = {}
    for s in samples:
        emp[s] = emp.get(s, 0) + 1 / len(samples)
    return 0.5 * sum(abs(emp.get(k, 0) - dist.get(k, 0)) for k in set(emp) | set(dist))


def make(mode, seed, scheduler=None, llm=None, engine=None, rule="loglinear", step=STEP, max_draft=2,
         draft_policy="fixed"):
    engine = engine or tiny_engine({"slm": 1})
    cfg = SearchConfig(temperature=T, top_p=1.0, fusion_alpha=ALPHA, max_step_tokens=step, seed=seed,
                       step_delimiter="\n\n\n\n", fusion_rule=rule)
    be = EngineExecutor(engine, scheduler or TableScheduler(), cfg, llm=llm or TableLLM(),
                       base=TableLLM(BASE) if rule == "proxy" else None,
                       options=CollabOptions(collab_mode=mode, max_draft=max_draft, draft_policy=draft_policy))
    return be, engine


@pytest.mark.parametrize("rule", ["loglinear", "proxy"])
def test_speculative_equals_exact_fused_distribution_bigram(rule):
    n = 8000
    be_e, eng = make("exact", 0, rule=rule)
    be_s, _ = make("speculative", 1, engine=eng, rule=rule)
    prompt = "ab"
    root = asyncio.run(be_e.root(prompt))
    last = root.slm.token_ids[-1]
    be_e.release(root)
    dist = exact_distribution(last, rule)
    assert abs(sum(dist.values()) - 1) < 1e-6 and len(dist) == 21
    s_exact = sample_steps(be_e, eng, n, prompt)
    s_spec = sample_steps(be_s, eng, n, prompt)
    # Expected TV of n samples over 21 outcomes is about 0.016: 0.04 is a loose but failing bound
    # (fusing with alpha=0 or 1, or skipping the residual resample, lands far above it).
    assert tv(s_exact, dist) < 0.04
    assert tv(s_spec, dist) < 0.04
    assert 0.2 < be_s.counts.draft_accepted / be_s.counts.draft_proposed < 0.95   # rejections did happen
    assert be_s.counts.llm_rounds < be_e.counts.llm_rounds                        # and it cost fewer LLM calls
    if rule == "proxy":  # the base was asked in lockstep with the LLM, once per LLM call
        assert (be_e.base.calls, be_s.base.calls) == (be_e.llm.calls, be_s.llm.calls)
        # an "llm" step stays the LLM alone under proxy: no base rows, the LLM's own distribution
        be_l, _ = make("exact", 2, engine=eng, rule=rule)
        s_llm = sample_steps(be_l, eng, 4000, prompt, action="llm")
        assert be_l.base.calls == 0
        llm_only = {}
        def walk(prefix, prev, prob):
            if prefix and (prefix[-1] == EOS or len(prefix) == STEP):
                llm_only[tuple(prefix)] = prob
                return
            p = torch.softmax(LLM[prev] / T, -1)
            for t in LIVE:
                walk(prefix + [t], t, prob * float(p[t]))
        walk([], last, 1.0)
        assert tv(s_llm, llm_only) < 0.05 and tv(s_llm, dist) > 0.1
    eng.cache.check_refcounts()


def test_adaptive_drafts_sample_the_same_distribution_with_less_llm_work():
    """Draft lengths that follow the step's own acceptances (fused_step.next_draft) keep every
    round exact: 5-token steps, drafts of 1-4 tokens, against the closed-form distribution."""
    from gboost.collab.fused_step import next_draft
    opt = CollabOptions(max_draft=4, draft_policy="adaptive")
    assert [next_draft(opt, 2, 2, 2), next_draft(opt, 4, 4, 4), next_draft(opt, 4, 4, 1), next_draft(opt, 4, 3, 0)] \
        == [4, 4, 2, 1]
    assert next_draft(CollabOptions(max_draft=4), 4, 4, 0) == 4
    step, n = 5, 6000
    be, eng = make("speculative", 5, step=step, max_draft=4, draft_policy="adaptive")
    fixed, _ = make("speculative", 5, engine=eng, step=step, max_draft=4)
    root = asyncio.run(be.root("ab"))
    dist = exact_distribution(root.slm.token_ids[-1], step=step)
    be.release(root)
    assert abs(sum(dist.values()) - 1) < 1e-6
    # E[TV] of n samples is at most about 0.4 * sum(sqrt(p)) / sqrt(n) = 0.068 here (less where
    # n * p < 1); the distribution of fusion weight 0.3 or 0.7 instead of 0.5 is 0.18 / 0.14 away
    assert sum(dist[k] ** 0.5 for k in dist) < 14
    assert tv(sample_steps(be, eng, n, "ab"), dist) < 0.1
    sample_steps(fixed, eng, n // 3, "ab")
    # the same steps cost fewer drafted (so LLM-computed) positions, at a higher acceptance
    c, f = be.counts, fixed.counts
    assert c.draft_proposed / n < f.draft_proposed / (n // 3)
    assert c.draft_accepted / c.draft_proposed > f.draft_accepted / f.draft_proposed
    eng.cache.check_refcounts()


def test_speculative_equals_exact_with_tiny_transformers():
    """Same property through real model forwards on the shared pool: first-token distribution."""
    eng = tiny_engine({"slm": 1, "llm": 2}, num_blocks=4096)
    sched = Scheduler(eng)
    llm = LocalLLM(eng, sched)
    cfg = dict(temperature=1.0, top_p=1.0, fusion_alpha=ALPHA, max_step_tokens=2, step_delimiter="\n\n\n\n")
    probe = EngineExecutor(eng, sched, SearchConfig(**cfg), llm=llm)
    root = asyncio.run(probe.root("xyz"))
    prompt_ids = list(root.slm.token_ids)   # exactly the context the steps are sampled after
    probe.release(root)
    with torch.inference_mode():
        s = eng.cache.new_sequence(eng.role("slm").key, prompt_ids)
        ls = eng.role("slm").runner.run([s], "last")[0]
        eng.cache.free(s)
        s = eng.cache.new_sequence(eng.role("llm").key, prompt_ids)
        ll = eng.role("llm").runner.run([s], "last")[0]
        eng.cache.free(s)
    p = torch.softmax((1 - ALPHA) * torch.log_softmax(ls, -1) + ALPHA * torch.log_softmax(ll, -1), -1)
    firsts = {}
    for mode in ("exact", "speculative"):
        be = EngineExecutor(eng, sched, SearchConfig(seed=3, **cfg), llm=llm,
                           options=CollabOptions(collab_mode=mode, max_draft=2))
        async def go():
            root = await be.root("xyz")
            kids = await be.expand(root, "collab", 3000)
            out = [k.token_ids[0] for k in kids]
            for k in kids:
                be.release(k.state)
            be.release(root)
            return out
        firsts[mode] = torch.bincount(torch.tensor(asyncio.run(go())), minlength=V).float() / 3000
    for mode, f in firsts.items():
        assert 0.5 * (f - p).abs().sum() < 0.12, mode   # ~260 outcomes, 3000 draws: E[TV] ~ 0.07
    eng.cache.check_refcounts()
