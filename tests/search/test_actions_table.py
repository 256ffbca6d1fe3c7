"""The table of actions is the one definition every list and check derives from; the gated step is
the one rule behind the gate policy, rsd and the completion."""
import asyncio

import pytest

from gboost.search import actions as A
from gboost.search.config import ACTION_POLICIES, LLM_ACTIONS, METHODS, ConfigError, SearchConfig, check_stack_runs
from gboost.search.context import SearchContext
from gboost.search.gate import gated_step
from gboost.search.policies import POLICIES
from toy_executor import ToyExecutor


def test_every_list_of_actions_derives_from_the_table():
    from gboost.collab.executor import STEPS
    from gboost.search.protocol import ACTIONS
    from gboost.server.solve import CAPPED
    names = tuple(a.name for a in A.TABLE)
    assert ACTIONS == A.ACTIONS == names == tuple(STEPS)       # one step function per action
    assert LLM_ACTIONS == tuple(a.name for a in A.TABLE if a.asks_llm)
    assert {a.width_field for a in A.TABLE if a.width_field} <= set(CAPPED)   # every width is capped
    assert A.EXPANSION_LLM_ACTIONS == ("collab", "delegate")
    assert set(POLICIES) == set(ACTION_POLICIES)
    assert set(A.METHOD_ACTIONS) == set(METHODS) - {"gboost"}
    for a in A.TABLE:   # a stand-in needs something else, so that it can stand in
        assert a.stand_in is None or A.BY_NAME[a.stand_in].needs != a.needs


@pytest.mark.parametrize("rows, chat, want", [
    (True, True, {"slm": "slm", "collab": "collab", "llm": "llm", "delegate": "delegate"}),
    (False, True, {"slm": "slm", "collab": None, "llm": "delegate", "delegate": "delegate"}),
    (True, False, {"slm": "slm", "collab": "collab", "llm": "llm", "delegate": "llm"}),
    (False, False, {"slm": "slm", "collab": None, "llm": None, "delegate": None}),
])
def test_what_runs_for_each_action_on_each_kind_of_general_llm(rows, chat, want):
    assert {a: A.runs_as(a, has_rows=rows, has_chat=chat) for a in A.ACTIONS} == want
    for a, got in want.items():
        if got is None:
            assert A.cannot_run(a, has_rows=rows, has_chat=chat).startswith(f"action {a!r} needs a general LLM")


def test_the_stack_check_names_the_action_and_the_key():
    both = SearchConfig(collab_width=1)
    check_stack_runs(both, has_llm=True, has_base=False)
    with pytest.raises(ConfigError, match="chat-only") as e:
        check_stack_runs(both, has_llm=False, has_base=False, has_writer=True)
    assert e.value.key == "collab_width" and "fused steps" in str(e.value)
    lean = SearchConfig(collab_width=0, delegate_width=1)
    check_stack_runs(lean, has_llm=False, has_base=False, has_writer=True)
    check_stack_runs(lean, has_llm=True, has_base=False)     # the LLM writes from its rows instead
    with pytest.raises(ConfigError, match="delegate_width > 0 needs a general LLM") as e:
        check_stack_runs(lean, has_llm=False, has_base=False)
    assert e.value.key == "delegate_width"
    check_stack_runs(SearchConfig(method="slm"), has_llm=False, has_base=False)


def _scripted(rewards: dict[str, float], faults: set[str] = frozenset()):
    def step(q, prior, action, i):
        return f"{action}{i}@{len(prior)}"

    def reward(q, steps):
        return rewards.get(steps[-1].split("@")[0], 0.0)

    def fault(q, prior, action, i):
        return "timeout" if action in faults else None
    return ToyExecutor(step, reward, fault_fn=fault)


def _run_gated(ex, cfg, **kw):
    async def go():
        ctx = SearchContext(ex, cfg, "q", None)
        root = await ctx.make_root()
        kids = await gated_step(ctx, [root], **kw)
        out = [(c.action, c.fault, c.pruned) for c in kids], [(c.action, c.pruned) for c in root.children]
        ctx.release_all()
        return out
    return asyncio.run(go())


LLM1 = dict(llm_asks=lambda quota: [("llm", min(1, quota))])


def test_a_gate_that_never_opens_asks_no_llm():
    ex = _scripted({"slm0": 0.9})
    kids, _ = _run_gated(ex, SearchConfig(), slm_n=1, threshold=0.5, replaces=True, **LLM1)
    assert kids == [("slm", None, False)] and ex.cost.llm_calls == 0 and ex.cost.llm_tokens == 0


def test_an_open_gate_replaces_or_keeps_the_weak_slm_step():
    ex = _scripted({"slm0": 0.1, "llm0": 0.8})
    kids, tree = _run_gated(ex, SearchConfig(), slm_n=1, threshold=0.5, replaces=True, **LLM1)
    assert kids == [("llm", None, False)] and tree == [("slm", True), ("llm", False)]
    kids, tree = _run_gated(_scripted({"slm0": 0.1}), SearchConfig(), slm_n=1, threshold=0.5, replaces=False,
                            **LLM1)
    assert kids == [("slm", None, False), ("llm", None, False)] and tree == [("slm", False), ("llm", False)]


def test_a_faulted_llm_step_replaces_nothing_and_no_quota_asks_nothing():
    # (the SLM writes the faulted step again, the same text: kept apart from its sibling, not deduplicated)
    kids, tree = _run_gated(_scripted({"slm0": 0.1}, faults={"llm"}), SearchConfig(), slm_n=1, threshold=0.5,
                            replaces=True, dedup=False, **LLM1)
    assert [(a, f) for a, f, _ in kids] == [("slm", None), ("llm", "timeout")] and not any(p for _, p in tree)
    ex = _scripted({"slm0": 0.1})
    kids, _ = _run_gated(ex, SearchConfig(max_llm_calls=0), slm_n=1, threshold=0.5, replaces=True, **LLM1)
    assert kids == [("slm", None, False)] and ex.cost.llm_calls == 0
