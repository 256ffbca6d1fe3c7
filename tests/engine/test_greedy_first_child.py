"""greedy_first_child: an expansion's first child of each action is the greedy step, its siblings
are sampled, on the real backend (tiny random models) and in the naive reference alike."""
import asyncio

import pytest

from gboost.collab.rules import child_temperature
from gboost.search.config import SearchConfig

from test_backend_e2e import build


def children(action, n, **cfg_kw):
    eng, sched, cfg, be = build(max_step_tokens=8, **cfg_kw)

    async def go():
        root = await be.root("Tom has 4 apples and buys 5 more. How many?")
        kids = await be.expand(root, action, n)
        texts = [k.text for k in kids]
        for s in [root] + [k.state for k in kids]:
            be.release(s)
        return texts
    texts = asyncio.run(go())
    eng.cache.check_refcounts()
    assert eng.cache.live == {}
    return texts


def test_the_rule():
    cfg = SearchConfig(temperature=0.7, greedy_first_child=True)
    assert [child_temperature(cfg, i) for i in range(3)] == [0.0, 0.7, 0.7]
    assert child_temperature(SearchConfig(temperature=0.7), 0) == 0.7


@pytest.mark.parametrize("action", ["slm", "llm", "collab"])
def test_the_first_child_is_the_greedy_step_and_its_siblings_are_sampled(action):
    greedy = children(action, 1, temperature=0.0)[0]
    runs = [children(action, 3, temperature=1.5, greedy_first_child=True, seed=s) for s in range(4)]
    assert all(r[0] == greedy for r in runs)  # every seed: the greedy step first
    # at temperature 1.5 on a random model the sampled siblings differ across seeds and from greedy
    siblings = {t for r in runs for t in r[1:]}
    assert len(siblings) > 1 and siblings != {greedy}
    without = [children(action, 1, temperature=1.5, seed=s)[0] for s in range(4)]
    assert any(t != greedy for t in without)  # without the rule the first child is sampled too


def test_an_expansion_from_a_later_index_continues_the_same_samples():
    # expand(n, first) draws samples first..first+n-1: a node expanded again gets new ones
    eng, sched, cfg, be = build(max_step_tokens=8, temperature=1.5, greedy_first_child=True)

    async def go():
        root = await be.root("Tom has 4 apples and buys 5 more. How many?")
        three = await be.expand(root, "slm", 3)
        again = await be.expand(root, "slm", 1) + await be.expand(root, "slm", 2, first=1)
        texts = [k.text for k in three], [k.text for k in again]
        for s in [root] + [k.state for k in three + again]:
            be.release(s)
        return texts
    three, again = asyncio.run(go())
    assert three == again and len(set(three)) > 1
    eng.cache.check_refcounts()
