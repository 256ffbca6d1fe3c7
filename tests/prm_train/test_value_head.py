"""Value heads: fitting, saving, the `value_head` PRM kind in the search, and `train-prm` end to end."""
import asyncio
import itertools
import json

import pytest
import torch

from gboost.evals.datasets import rows_from_dicts
from gboost.llm.local import LocalLLM
from gboost.prm.value_head import HeadCard, ValueHead, load_head, model_fingerprint, save_head
from gboost.prm_train.features import Solution, extract, slm_solution, text_solution
from gboost.prm_train.fit import FitConfig, auroc, fit_head
from gboost.prm_train.pipeline import TrainPlan, step_labels, train_prm
from gboost.prm_train.rollouts import RolloutPlan, read_records, run_rollouts
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.prm.value_scorer import ValueHeadScorer
from gboost.testing import tiny_engine


def run(coro):
    return asyncio.run(coro)


# -- fitting -------------------------------------------------------------------------------------
def test_auroc_equals_the_pairwise_definition():
    g = torch.Generator().manual_seed(0)
    s = (torch.rand(60, generator=g) * 5).round() / 5  # many ties
    y = (torch.rand(60, generator=g) < 0.4).float()
    pos, neg = s[y == 1].tolist(), s[y == 0].tolist()
    want = sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in itertools.product(pos, neg)) / (len(pos) * len(neg))
    assert auroc(s, y) == pytest.approx(want, abs=1e-12)
    assert auroc([0.1, 0.2], [1, 1]) != auroc([0.1, 0.2], [1, 1])  # NaN without both classes


def _synthetic(n=3000, h=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, h, generator=g) * torch.linspace(0.5, 3.0, h)  # features of unequal scales
    w = torch.randn(h, generator=g)
    y = ((ValueHead.normalise(X) @ w) > 0).float()
    groups = [i // 6 for i in range(n)]  # 6 rows per "question"
    return X, y, groups


def test_head_learns_a_separable_problem_and_not_shuffled_labels():
    X, y, groups = _synthetic()
    good = fit_head(X, y, groups, FitConfig(seed=1))
    assert good.metrics["auroc_val_steps"] > 0.97
    # control: labels shuffled across rows carry no signal, so held-out AUROC stays near chance
    # (500 held-out rows: the AUROC's standard deviation under no signal is about 0.026)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(2))
    bad = fit_head(X, y[perm], groups, FitConfig(seed=1))
    assert abs(bad.metrics["auroc_val_steps"] - 0.5) < 0.13
    assert bad.metrics["auroc_train_steps"] > bad.metrics["auroc_val_steps"]  # it can only memorise


def test_mlp_head_and_held_out_questions_are_disjoint():
    X, y, groups = _synthetic(n=1200, seed=3)
    res = fit_head(X, y, groups, FitConfig(mlp_hidden=16, seed=4, max_epochs=200))
    m = res.metrics
    assert m["questions_train"] + m["questions_val"] == 200 and m["rows_train"] + m["rows_val"] == 1200
    assert m["auroc_val_steps"] > 0.9


def test_path_aurocs_aggregate_held_out_solutions():
    X, _, groups = _synthetic(n=1200, seed=6)
    sols = [i // 3 for i in range(1200)]                    # 3 steps a solution, 2 solutions a question
    w = torch.randn(X.shape[1], generator=torch.Generator().manual_seed(7))
    good = (ValueHead.normalise(X) @ w).view(-1, 3)[:, -1] > 0  # a solution is right iff its last step says so
    y = good.repeat_interleave(3).float()                   # outcome labels: every step takes its solution's
    m = fit_head(X, y, groups, FitConfig(seed=1), sols).metrics
    assert m["auroc_val_path_last"] > 0.9 > m["auroc_val_path_min"]  # earlier steps carry no signal here
    assert all(0.0 <= m[f"auroc_val_path_{a}"] <= 1.0 for a in ("last", "min", "mean"))


def test_saved_head_reloads_to_identical_scores(tmp_path):
    X, y, groups = _synthetic(n=600, seed=5)
    head = fit_head(X, y, groups, FitConfig(mlp_hidden=8, max_epochs=50)).head
    card = HeadCard("m", "f" * 64, X.shape[1], layer=1, sequence="slm", mlp_hidden=8)
    save_head(tmp_path, head, card)
    again, card2 = load_head(tmp_path)
    assert card2 == card
    assert torch.equal(head.score(X), again.score(X))


def test_broken_heads_are_refused_with_the_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="card.json"):
        load_head(tmp_path)
    save_head(tmp_path, ValueHead(8), HeadCard("m", "f", 8, 1, "slm"))
    (tmp_path / "card.json").write_text(json.dumps({"base_model": "m"}))
    with pytest.raises(ValueError, match="card.json"):
        load_head(tmp_path)
    save_head(tmp_path, ValueHead(8), HeadCard("m", "f", 16, 1, "slm"))  # card says 16, weights are 8 wide
    with pytest.raises(ValueError, match="do not fit"):
        load_head(tmp_path)


# -- the value_head PRM in the search --------------------------------------------------------------
def _head_for(model, tmp_path, sequence="slm", layer=1, key="tiny-1", seed=0):
    g = torch.Generator().manual_seed(seed)
    h = model.config.hidden_size
    head = ValueHead(h)
    with torch.no_grad():
        head.net.weight.copy_(torch.randn(1, h, generator=g))
        head.mean.copy_(torch.randn(h, generator=g) * 0.1)
    d = tmp_path / f"head-{sequence}-{layer}"
    save_head(d, head, HeadCard(key, model_fingerprint(model), h, layer, sequence))
    return str(d)


def _backend(tmp_path, mode="exact", num_blocks=512, sequence="slm", layer=1, **cfg_kw):
    eng = tiny_engine({"slm": 1, "llm": 2}, num_blocks=num_blocks)
    sched = Scheduler(eng)
    role = "slm" if sequence == "slm" else "llm"
    d = _head_for(eng.role(role).model, tmp_path, sequence, layer, key=eng.role(role).key)
    cfg = SearchConfig(**{"max_step_tokens": 6, "max_depth": 3, "num_simulations": 4, "temperature": 0.8,
                          "top_p": 1.0, **cfg_kw})
    be = EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched), prm=ValueHeadScorer(eng, sched, d),
                       options=CollabOptions(collab_mode=mode, max_draft=4))
    return eng, sched, be


def _from_scratch(be, states, ids_of):
    """Rewards from a fresh forward of each state's whole sequence (features.extract)."""
    m, head = be.prm.model, be.prm.head
    sols = [Solution(ids, [len(ids) - 1]) for ids in map(ids_of, states)]
    rows = extract(m, be.engine.cache, sols, [be.prm.card.layer])[be.prm.card.layer]
    return [float(head.score(r)[0]) for r in rows]


@pytest.mark.parametrize("sequence,layer", [("slm", 1), ("slm", 2), ("text", 2)])
@pytest.mark.parametrize("action,mode", [("slm", "exact"), ("collab", "exact"), ("collab", "speculative")])
def test_value_head_score_equals_a_from_scratch_forward(tmp_path, sequence, layer, action, mode):
    eng, sched, be = _backend(tmp_path, mode=mode, sequence=sequence, layer=layer)
    ids_of = (lambda s: list(s.slm.token_ids)) if sequence == "slm" else (lambda s: list(s.prm.token_ids))
    async def go():
        root = await be.root("What is 2+3?")
        kids = await be.expand(root, action, 3)
        got = await be.score([k.state for k in kids])
        grand = await be.expand(kids[0].state, action, 2)
        got2 = await be.score([g.state for g in grand])
        states = [k.state for k in kids] + [g.state for g in grand]
        want = _from_scratch(be, states, ids_of)
        for s in [root] + states:
            be.release(s)
        return got + got2, want
    got, want = run(go())
    # fp32 tiny models; incremental and one-shot forwards differ only in summation order
    assert got == pytest.approx(want, abs=1e-5)
    assert len(set(round(x, 6) for x in got)) > 1  # the head does see the steps
    eng.cache.check_refcounts()
    assert eng.cache.live == {}


def test_slm_value_head_costs_no_extra_forward_and_keeps_the_draws(tmp_path):
    """Scoring computes each step's pending last token once; the children then draw from those
    logits, so a child computes one token fewer, and it samples what it would have sampled."""
    eng, sched, be = _backend(tmp_path, temperature=1.0)
    runner = eng.role("slm").runner
    async def go():
        root = await be.root("Compute 6*7.")
        (kid,) = await be.expand(root, "slm", 1)
        before = runner.tokens_computed
        await be.score([kid.state])
        assert runner.tokens_computed - before == 1 and be.cost.prm_tokens == 0
        assert be.cost.prm_tokens_saved == len(kid.token_ids)
        before = runner.tokens_computed
        with_ready = await be.expand(kid.state, "slm", 3)
        used = runner.tokens_computed - before
        assert used == sum(len(g.token_ids) - 1 for g in with_ready)  # no child recomputed the parent's token
        kid.state.ready = None
        without = await be.expand(kid.state, "slm", 3)
        assert [g.token_ids for g in without] == [g.token_ids for g in with_ready]
        for s in [root, kid.state] + [g.state for g in with_ready + without]:
            be.release(s)
    run(go())
    eng.cache.check_refcounts()


def test_preempted_then_recomputed_steps_score_the_same(tmp_path):
    eng, sched, be = _backend(tmp_path)
    async def go():
        root = await be.root("What is 2+3?")
        kids = await be.expand(root, "slm", 2)
        for k in kids:  # cut their unshared blocks back: the score's forward recomputes them
            eng.cache.preempt(k.state.slm)
        assert all(k.state.slm.num_computed < len(k.state.slm.token_ids) - 1 for k in kids)
        got = await be.score([k.state for k in kids])
        want = _from_scratch(be, [k.state for k in kids], lambda s: list(s.slm.token_ids))
        grand = await be.expand(kids[0].state, "slm", 2)  # and the kept logits still serve the child
        for s in [root] + [k.state for k in kids] + [g.state for g in grand]:
            be.release(s)
        return got, want
    got, want = run(go())
    assert got == pytest.approx(want, abs=1e-5)
    eng.cache.check_refcounts()


@pytest.mark.parametrize("method", ["gboost", "beam", "rsd"])
def test_search_runs_on_a_value_head_and_releases_everything(tmp_path, method):
    eng, sched, be = _backend(tmp_path, method=method, beam_width=2)
    res = run(solve("What is 2+3?", be, be.cfg))
    assert res.steps and all(0 < s["reward"] < 1 for s in res.steps if s["reward"] is not None)
    assert res.cost.prm_tokens == 0 and res.cost.prm_tokens_saved > 0
    eng.cache.check_refcounts()
    assert eng.cache.live == {}


def test_a_head_for_another_model_is_refused(tmp_path):
    eng = tiny_engine({"slm": 1, "llm": 2})
    other = tiny_engine({"slm": 5})
    d = _head_for(other.role("slm").model, tmp_path, key="tiny-5")
    with pytest.raises(ValueError, match="trained on 'tiny-5'"):
        ValueHeadScorer(eng, Scheduler(eng), d)
    # a text-layout head finds the resident model it was trained on, whatever its role
    d2 = _head_for(eng.role("llm").model, tmp_path, sequence="text", key="tiny-2")
    assert ValueHeadScorer(eng, Scheduler(eng), d2).model.key == "tiny-2"


# -- train-prm end to end --------------------------------------------------------------------------
ROWS = [{"question": f"What is {a} + {b}?", "answer": f"{a} + {b} = {a + b}\n#### {a + b}"}
        for a, b in [(1, 2), (3, 4), (5, 6), (7, 8), (2, 2), (9, 1)]]


def _scripted(text, row):
    # tiny random models write bytes: a scripted checker makes labels of both kinds
    return sum(map(ord, text)) % 3 == 0


def _train_backend():
    eng = tiny_engine({"slm": 1, "llm": 2})
    sched = Scheduler(eng)
    cfg = SearchConfig(max_step_tokens=5, max_depth=3, temperature=1.0, top_p=1.0)
    return EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched), options=CollabOptions(max_draft=3)), cfg


@pytest.mark.parametrize("features", ["slm", "llm"])
def test_train_prm_end_to_end(tmp_path, features):
    rows = rows_from_dicts(ROWS)
    be, cfg = _train_backend()
    plan = TrainPlan(RolloutPlan(samples=2, collab_share=0.4, llm_share=0.3, concurrency=4), features=features,
                     fit=FitConfig(max_epochs=30))
    card, recs = run(train_prm(be, cfg, rows, tmp_path, plan, check=_scripted, progress=False))
    assert len(recs) == 12 and {(r["line"], r["k"]) for r in recs} == {(i, k) for i in range(1, 7) for k in (0, 1)}
    for r in recs:  # labels: the scripted grade of the solution, on every step
        text = cfg.step_delimiter.join(s["text"] for s in r["steps"])
        assert r["correct"] == _scripted(text, None)
        assert step_labels(r, "outcome") == [float(r["correct"])] * len(r["steps"])
        assert slm_solution(r).ids[-1] == r["steps"][-1]["token_ids"][-1]
    actions = {s["action"] for r in recs for s in r["steps"]}
    assert actions == {"slm", "collab", "llm"}  # the head sees every kind of step a search scores
    assert 0 < sum(r["correct"] for r in recs) < 12
    head, card2 = load_head(tmp_path)
    assert card2 == card and card.sequence == ("slm" if features == "slm" else "text")
    role = "slm" if features == "slm" else "llm"
    assert card.fingerprint == model_fingerprint(be.engine.role(role).model)
    assert be.engine.cache.live == {}
    be.engine.cache.check_refcounts()
    # the head plugs into a search on the same models
    scorer = ValueHeadScorer(be.engine, be.scheduler, str(tmp_path))
    assert scorer.reads_slm == (features == "slm")


def test_train_prm_resumes_and_mc_labels(tmp_path):
    rows = rows_from_dicts(ROWS[:3])
    be, cfg = _train_backend()
    small = TrainPlan(RolloutPlan(samples=1, collab_share=0.0), fit=FitConfig(max_epochs=5))
    run(train_prm(be, cfg, rows, tmp_path, small, check=_scripted, progress=False))
    first = read_records(tmp_path / "rollouts.jsonl")
    more = TrainPlan(RolloutPlan(samples=2, collab_share=0.0), fit=FitConfig(max_epochs=5))
    _, recs = run(train_prm(be, cfg, rows, tmp_path, more, check=_scripted, progress=False))
    lines = (tmp_path / "rollouts.jsonl").read_text().splitlines()
    assert len(lines) == 6  # 3 kept, 3 new: nothing sampled twice
    assert all(recs[i] == first[(recs[i]["line"], 0)] for i in range(0, 6, 2))
    # Math-Shepherd labels: each step's share of M completions that the checker accepts
    mc = TrainPlan(RolloutPlan(samples=1, collab_share=0.0, mc_rollouts=3), labels="mc", fit=FitConfig(max_epochs=5))
    _, recs = run(train_prm(be, cfg, rows, tmp_path / "mc", mc, check=_scripted, progress=False))
    for r in recs:
        assert len(r["mc"]) == len(r["steps"]) and r["mc"][-1] == float(r["correct"])
        assert all(x in (0.0, 1 / 3, 2 / 3, 1.0) for x in r["mc"])
    assert be.engine.cache.live == {}
    be.engine.cache.check_refcounts()


def test_text_solution_is_the_scorers_sequence():
    eng = tiny_engine({"slm": 1, "llm": 2})
    tok = eng.role("llm").tokenizer
    rec = {"question": "Q?", "steps": [{"text": "a"}, {"text": "b c"}]}
    sol = text_solution(tok, rec)
    assert tok.decode(sol.ids).endswith("Q?\n\na\n\nb c\n\n") and sol.ends == [len(sol.ids) - 6, len(sol.ids) - 1]


def test_extract_stops_at_the_deepest_layer_and_groups_give_the_same_rows():
    eng = tiny_engine({"slm": 1, "llm": 2})
    m = eng.role("slm")
    n = m.config.num_hidden_layers
    assert n >= 2
    g = torch.Generator().manual_seed(3)
    sols = [Solution(torch.randint(0, m.config.vocab_size, (t,), generator=g).tolist(), [t // 2, t - 1])
            for t in (9, 17, 5)]
    full = extract(m, eng.cache, sols, [1, n], batch_tokens=10**6)  # one forward through every layer
    runs = eng.cache.runs
    short = extract(m, eng.cache, sols, [1])                          # three forwards cut after layer 1
    for a, b in zip(full[1], short[1]):
        assert a.shape == (2, m.config.hidden_size)
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # fp32: only the batch's summation order differs
    assert not torch.allclose(full[1][0], full[n][0])   # the layers do differ: the cut is not a no-op
    assert eng.cache.runs == runs                       # a cut forward commits nothing ...
    assert eng.cache.live == {}                         # ... and leaves no sequence or block held
    eng.cache.check_refcounts()
    assert m.model.captured is None


def test_rollouts_stop_at_the_token_cap(tmp_path):
    rows = rows_from_dicts(ROWS[:3])
    be, cfg = _train_backend()  # max_depth 3, max_step_tokens 5: uncapped chains run up to 15 tokens
    plan = RolloutPlan(samples=2, collab_share=0.5, concurrency=4, max_tokens=4)
    recs = run(run_rollouts(be, cfg, rows, tmp_path / "r.jsonl", plan, check=_scripted, progress=False))
    for r in recs:
        n = sum(len(s["token_ids"]) for s in r["steps"])
        # a chain ends at its answer or at the first step that reaches the cap, never later
        assert n - len(r["steps"][-1]["token_ids"]) < 4
        assert not r["truncated"] or n >= 4
    assert any(r["truncated"] for r in recs)
    assert be.engine.cache.live == {}
    be.engine.cache.check_refcounts()
    with pytest.raises(ValueError, match="max_tokens"):
        RolloutPlan(max_tokens=0).validate()


def test_text_solution_can_end_on_the_slms_end_of_turn():
    eng = tiny_engine({"slm": 1})
    m = eng.role("slm")
    rec = {"question": "Q?", "steps": [{"text": "a"}, {"text": "b c"}]}
    plain, eos = text_solution(m.tokenizer, rec), text_solution(m.tokenizer, rec, m.eos_token_ids[0])
    assert eos.ends[0] == plain.ends[0] and eos.ids[:eos.ends[0] + 1] == plain.ids[:plain.ends[0] + 1]
    assert eos.ids[-1] == m.eos_token_ids[0] and eos.ends[-1] == len(eos.ids) - 1
    assert m.tokenizer.decode(eos.ids[eos.ends[0] + 1:-1]) == "b c"


@pytest.mark.parametrize("kw, msg", [({"collab_share": 1.2}, "collab_share"), ({"llm_share": -0.1}, "llm_share"),
                                     ({"collab_share": 0.8, "llm_share": 0.3}, r"llm_share must be in \[0, 1 - collab_share\]")])
def test_rollout_shares_are_checked(kw, msg):
    with pytest.raises(ValueError, match=msg):
        RolloutPlan(**kw).validate()
