"""Baselines (slm, llm, fusion, bon, beam, rsd) on the scripted backend."""
import asyncio

import pytest

from gboost.search.api import solve
from toy_executor import ToyExecutor
from gboost.search.config import SearchConfig


def run(coro):
    return asyncio.run(coro)


def cfg(**kw):
    return SearchConfig(**{"max_llm_faults": None, **kw})


def chain_step(q, steps, action, i):
    d = len(steps) + 1
    return f"{action} step {d}: The answer is {d}." if d == 3 else f"{action} step {d}"


@pytest.mark.parametrize("method,action", [("slm", "slm"), ("llm", "llm"), ("fusion", "collab")])
def test_single_chain_methods(method, action):
    b = ToyExecutor(chain_step, lambda q, s: 0.6)
    seen = []
    res = run(solve("q", b, cfg(method=method), on_step=seen.append))
    assert [(c[2], c[3]) for c in b.expand_calls()] == [(action, 1)] * 3
    assert [s["action"] for s in res.steps] == [action] * 3
    assert res.answer == "3"
    assert [s["index"] for s in seen] == [0, 1, 2] and seen[2]["text"] == res.steps[2]["text"]
    assert [c[1] for c in b.score_calls()] == [1, 1, 1]
    assert res.cost.llm_calls == (0 if action == "slm" else 3)
    assert not b.live


def test_chain_without_scoring():
    b = ToyExecutor(chain_step, lambda q, s: 0.6)
    res = run(solve("q", b, cfg(method="slm", score_baselines=False)))
    assert b.score_calls() == [] and [s["reward"] for s in res.steps] == [None] * 3


def test_llm_chain_falls_back_to_slm_when_budget_spent():
    b = ToyExecutor(chain_step, lambda q, s: 0.6)
    res = run(solve("q", b, cfg(method="llm", max_llm_calls=1)))
    assert [s["action"] for s in res.steps] == ["llm", "slm", "slm"]


def bon_step(q, steps, action, i):
    # chain i of best-of-N: 2 steps; its first step carries the chain index
    if not steps:
        return f"chain {i}"
    k = int(steps[0].split()[1])
    return f"The answer is {k % 3}. (chain {k})"


def bon_reward(q, steps):
    k = int(steps[0].split()[1])
    first = [0.99, 0.6, 0.3, 0.8, 0.62][k]
    last = [0.45, 0.7, 0.9, 0.58, 0.61][k]
    return first if len(steps) == 1 else last


def test_bon_ranks_full_solutions_by_aggregated_prm():
    results = {}
    for how in ("min", "last", "prod", "mean"):
        b = ToyExecutor(bon_step, bon_reward)
        res = run(solve("q", b, cfg(method="bon", bon_n=5, prm_aggregation=how)))
        results[how] = res.steps[0]["text"]
        assert len(res.root.children) == 5
        assert [c[3] for c in b.expand_calls()] == [5, 1, 1, 1, 1, 1]
        assert [c[1] for c in b.score_calls()] == [5, 5]  # all chains scored together per step
    # chain: 0=[.99,.45] 1=[.6,.7] 2=[.3,.9] 3=[.8,.58] 4=[.62,.61]
    # min: 4 (.61)  last: 2 (.9)  prod: 3 (.464 > .4455)  mean: 0 (.72 > .69)
    assert results == {"min": "chain 4", "last": "chain 2", "prod": "chain 3", "mean": "chain 0"}


def test_bon_weighted_vote_prefers_the_majority_answer():
    b = ToyExecutor(bon_step, bon_reward)
    res = run(solve("q", b, cfg(method="bon", bon_n=5, final_choice="weighted_vote", prm_aggregation="last")))
    # answers: chain0->0 (.45) chain1->1 (.7) chain2->2 (.9) chain3->0 (.58) chain4->1 (.61)
    # weights: "0": 1.03, "1": 1.31, "2": .9 -> answer 1 (chain 2 alone has the best path)
    assert res.answer == "1"
    assert res.steps[0]["text"] == "chain 1"


def beam_step(q, steps, action, i):
    d = len(steps) + 1
    prefix = steps[-1].split(":")[0] if steps else "r"
    text = f"{prefix}.{i}"
    return f"{text}: The answer is {text}" if d == 3 else f"{text}: step"


def beam_reward(q, steps):
    label = steps[-1].split(":")[0]   # e.g. r.1.0
    digits = [int(x) for x in label.split(".")[1:]]
    # prefer child 1 at depth 1 and child 0 deeper; encode as a distinct value per node
    score = 0.5 + 0.3 * (digits[0] == 1) + 0.1 * sum(x == 0 for x in digits[1:]) - 0.01 * sum(digits)
    return min(1.0, score)


def test_beam_keeps_the_best_beams_and_releases_the_rest():
    b = ToyExecutor(beam_step, beam_reward)
    res = run(solve("q", b, cfg(method="beam", beam_width=2, slm_width=3, prm_aggregation="last")))
    expanded = [c[4][-1].split(":")[0] if c[4] else "root" for c in b.expand_calls()]
    # depth 1: r.0 r.1 r.2 -> keep r.1 (.79) and r.0 (.5); depth 2: 6 children, keep the two best
    assert expanded[:3] == ["root", "r.1", "r.0"]
    assert len(expanded) == 5
    pruned = [n for n in res.root.iter_nodes() if n.pruned]
    assert {n.text.split(":")[0] for n in pruned if n.depth == 1} == {"r.2"}
    assert all(n.state is None for n in pruned)
    assert res.steps[-1]["text"].startswith("r.1.0.0")
    assert res.answer == "r.1.0.0"
    assert not b.live and b.n_released == b.n_created
    assert res.stats["stop_reason"] == "beams_complete"


def test_beam_releases_pruned_states_early():
    b = ToyExecutor(beam_step, beam_reward)
    released_during = []
    orig = b.score

    async def score(states):
        released_during.append(b.n_released)
        return await orig(states)

    b.score = score
    run(solve("q", b, cfg(method="beam", beam_width=1, slm_width=3)))
    # before the 2nd PRM call the two pruned depth-1 children were already released
    assert released_during[:2] == [0, 2]


def rsd_step(q, steps, action, i):
    d = len(steps) + 1
    return f"{action} {d}: The answer is 0." if d == 4 else f"{action} {d}"


def rsd_reward(q, steps):
    last = steps[-1]
    kind, d = last.split(":")[0].split()
    if kind == "llm":
        return 0.95
    return {1: 0.45, 2: 0.5, 3: 0.3, 4: 0.55}[int(d)]  # threshold 0.5: >= keeps the SLM step


def test_rsd_regenerates_exactly_the_low_prm_steps():
    b = ToyExecutor(rsd_step, rsd_reward)
    seen = []
    res = run(solve("q", b, cfg(method="rsd", rsd_threshold=0.5), on_step=seen.append))
    assert [s["action"] for s in res.steps] == ["llm", "slm", "llm", "slm"]
    assert [len(c[4]) for c in b.expand_calls("llm")] == [0, 2]  # regenerated at steps 1 and 3
    assert len(b.expand_calls("slm")) == 4
    assert res.stats["rsd_regenerated"] == 2
    assert [s["action"] for s in seen] == ["llm", "slm", "llm", "slm"]
    rejected = [n for n in res.root.iter_nodes() if n.pruned]
    assert [n.text for n in rejected] == ["slm 1", "slm 3"]
    assert res.cost.llm_calls == 2
    assert not b.live


def test_rsd_threshold_zero_never_calls_llm_and_budget_limits_it():
    b = ToyExecutor(rsd_step, rsd_reward)
    res = run(solve("q", b, cfg(method="rsd", rsd_threshold=0.0)))
    assert b.expand_calls("llm") == [] and [s["action"] for s in res.steps] == ["slm"] * 4
    b = ToyExecutor(rsd_step, rsd_reward)
    res = run(solve("q", b, cfg(method="rsd", rsd_threshold=0.5, max_llm_calls=1)))
    assert [s["action"] for s in res.steps] == ["llm", "slm", "slm", "slm"]
