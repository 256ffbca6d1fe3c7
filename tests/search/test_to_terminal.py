"""simulate_to_terminal: every simulation ends in a complete solution, on a scripted executor."""
import asyncio

import pytest

from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.search.final import terminals
from toy_executor import ToyExecutor


def labelled_step(question, steps, action, i):
    """Unique text per path and sample: no sibling is ever a duplicate."""
    return f"{'/'.join(steps)}>{action}{i}"


def cfg(**kw):
    base = dict(num_simulations=6, uct_c=0.5, slm_width=2, collab_width=0, max_depth=4, action_policy="both",
                simulate_to_terminal=True, finish_unterminated=False, max_llm_faults=None)
    return SearchConfig(**{**base, **kw})


def _solve(ex, c):
    return asyncio.run(solve("q", ex, c))


@pytest.mark.parametrize("n", [1, 3, 6])
def test_n_simulations_give_n_solutions(n):
    ex = ToyExecutor(labelled_step, lambda q, s: 0.3 + 0.1 * (len(s[-1]) % 5), max_depth=4)
    res = _solve(ex, cfg(num_simulations=n))
    paths = list(terminals(res.root))
    # each simulation's descent ends at a terminal it wrote; the last expansion of each writes
    # slm_width terminal siblings, so there are at least n terminal paths and at most 2n
    assert res.stats["simulations"] == res.stats["solutions"] == n and not ex.live
    assert n <= len(paths) <= 2 * n and all(p.depth == 4 for p in paths)


def test_without_the_rule_the_same_simulations_end_fewer_paths():
    ex = ToyExecutor(labelled_step, lambda q, s: 0.5, max_depth=4)
    res = _solve(ex, cfg(simulate_to_terminal=False))
    assert len(list(terminals(res.root))) < 6


def test_a_tree_too_small_for_the_simulations_says_so():
    # binary, depth 4: 16 paths in all, each simulation's last expansion writes two of them, so 8
    # simulations write the whole tree and the 9th finds nothing left to start
    ex = ToyExecutor(labelled_step, lambda q, s: 0.3 + 0.1 * (len(s[-1]) % 5), max_depth=4)
    res = _solve(ex, cfg(num_simulations=12))
    assert len(list(terminals(res.root))) == 16 and res.stats["stop_reason"] == "tree_exhausted"
    assert res.stats["simulations"] == res.stats["solutions"] == 8


def test_a_gate_that_never_opens_spends_no_llm_and_the_budget_holds_exactly():
    strong = ToyExecutor(labelled_step, lambda q, s: 0.9, max_depth=4)
    _solve(strong, cfg(action_policy="gate", collab_width=1, gate_threshold=0.5))
    assert strong.cost.llm_calls == 0 and strong.cost.llm_tokens == 0
    weak = ToyExecutor(labelled_step, lambda q, s: 0.1, max_depth=4)
    res = _solve(weak, cfg(action_policy="gate", collab_width=1, gate_threshold=0.5, max_llm_calls=3))
    assert weak.cost.llm_calls == 3
    assert sum(n.action == "collab" for n in res.root.iter_nodes()) == 3


def test_solutions_share_their_prefixes_in_the_kv_cache():
    """On the engine (tiny models): the SLM computes each node's step once; the solutions' shared
    prefixes are forked blocks, not recomputed (the pool's refcounts balance afterwards)."""
    from gboost.testing import tiny_stack
    c = SearchConfig(num_simulations=4, slm_width=2, collab_width=0, max_depth=3, max_step_tokens=5,
                     simulate_to_terminal=True, finish_unterminated=False, dedup_children=False)
    st = tiny_stack(c, llm=False)   # (a random tiny SLM repeats itself: duplicates kept, or too few paths)
    try:
        res = asyncio.run(solve("What is 2+3?", st.executor, c))
    finally:
        st.scheduler.close()
    prompt = len(st.executor._root_ids("What is 2+3?")[0])
    nodes = [n for n in res.root.iter_nodes() if not n.is_root]
    written = sum(len(n.token_ids) for n in nodes)
    paths = list(terminals(res.root))
    recomputed = sum(prompt + sum(len(m.token_ids) for m in p.path()) for p in paths)
    assert res.stats["solutions"] == 4 and len(paths) >= 4
    # each node computes its own step, plus its parent's last token once (a fork's first logits)
    assert res.cost.slm_tokens <= prompt + written + len(nodes) < recomputed
    assert st.engine.cache.live == {} and all(r == 0 for r in st.engine.cache.blocks.ref)


def test_rsd_at_n_runs_n_gated_chains_and_votes():
    # SLM drafts score 0.2 on their first step (weak: the LLM replaces them) and 0.8 after
    def reward(q, steps):
        return 0.2 if len(steps) == 1 and ">slm" in steps[-1] else 0.8
    ex = ToyExecutor(labelled_step, reward, max_depth=3)
    res = _solve(ex, SearchConfig(method="rsd", rsd_chains=4, rsd_threshold=0.5, max_depth=3,
                                  final_choice="weighted_vote", max_llm_calls=3))
    paths = list(terminals(res.root))
    firsts = [p.path()[0] for p in paths]
    assert len(paths) == 4 and len({f.id for f in firsts}) == 4          # four chains, four first steps
    assert sorted(f.action for f in firsts) == ["llm", "llm", "llm", "slm"]  # the LLM budget: 3 replacements
    assert ex.cost.llm_calls == 3 and res.stats["rsd_regenerated"] == 3 and len(res.steps) == 3
    assert not ex.live


def three_samples(question, steps, action, i):
    """Only three distinct steps per node, whatever the sample index: siblings repeat."""
    return f"{'/'.join(steps)}>{action}{i % 3}"


def test_duplicates_end_a_tree_early_unless_its_nodes_widen():
    seen = []

    def step(q, steps, action, i):
        seen.append((steps, i))
        return three_samples(q, steps, action, i)
    narrow = _solve(ToyExecutor(three_samples, lambda q, s: 0.5, max_depth=3), cfg(num_simulations=12, max_depth=3))
    # slm_width 2 and no widening: each node has its samples 0 and 1 -- a binary tree of depth 3,
    # 8 paths, written by 4 simulations (each one's last expansion writes two terminal siblings)
    assert narrow.stats["stop_reason"] == "tree_exhausted" and narrow.stats["solutions"] == 4
    ex = ToyExecutor(step, lambda q, s: 0.5, max_depth=3)
    wide = _solve(ex, cfg(num_simulations=12, max_depth=3, widen_to=4))
    assert wide.stats["solutions"] > narrow.stats["solutions"] and not ex.live
    nodes = list(wide.root.iter_nodes())
    assert all(n.drawn.get("slm", 0) <= 4 for n in nodes)               # never past widen_to
    assert any(n.drawn.get("slm", 0) == 4 for n in nodes)               # some node did widen
    assert all(len([c for c in n.children if not c.pruned]) <= 3 for n in nodes)  # duplicates dropped
    by_node: dict = {}
    for steps, i in seen:  # a node expanded again asked for new sample indices, never the old ones
        by_node.setdefault(steps, []).append(i)
    assert all(len(v) == len(set(v)) for v in by_node.values()) and any(len(v) == 4 for v in by_node.values())


def test_a_widened_tree_still_ends_when_every_node_has_drawn_its_samples():
    res = _solve(ToyExecutor(three_samples, lambda q, s: 0.5, max_depth=2), cfg(num_simulations=50, max_depth=2,
                                                                               widen_to=4))
    # depth 2, three distinct samples per node: 3 x 3 = 9 paths at most
    assert res.stats["stop_reason"] == "tree_exhausted" and len(list(terminals(res.root))) == 9


def test_a_token_budget_binds_chains_gated_in_one_batch():
    """Eight rsd chains whose SLM steps are all weak ask for eight LLM steps in one batch; a
    20-token budget grants one step a max_step_tokens (10) of it, each a 10-token share: they
    write 7 each, and the 6 left go to one more step, cut at 6. Exactly 20, never more."""
    def step(q, steps, action, i):
        return f"{action} {i} w w w w {len(steps)}"  # 7 tokens

    def reward(q, steps):
        return 0.2 if steps[-1].startswith("slm") else 0.8
    ex = ToyExecutor(step, reward, max_depth=3)
    res = _solve(ex, SearchConfig(method="rsd", rsd_chains=8, rsd_threshold=0.5, max_depth=3, max_step_tokens=10,
                                  final_choice="weighted_vote", max_llm_tokens=20))
    assert ex.cost.llm_calls == 3 and ex.cost.llm_tokens == 20    # 2 steps (20 / 10), then 1 (6 left)
    assert res.stats["rsd_regenerated"] == 3 and not ex.live
