"""G-Boost MCTS on a scripted, model-free backend."""
import pytest

from gboost.search.api import solve
from toy_executor import ToyExecutor
from gboost.trace import to_json
from _gboost_script import cfg, expanded_paths, labelled_step, run, table_reward


# --------------------------------------------------------------------------------------- UCT
def test_uct_choices_and_backpropagated_values_by_hand():
    rewards = {"d1-slm0": 0.5, "d1-slm1": 0.3, "d1-collab0": 0.9,
               "d2-slm0": 0.2, "d2-slm1": 0.2, "d2-collab0": 0.2}
    b = ToyExecutor(labelled_step, table_reward(rewards))
    res = run(solve("q", b, cfg(num_simulations=4)))
    # sim1 expands the root; sim2: all children visited once -> best reward (collab0, 0.9);
    # sim3: A=0.5+sqrt(ln6/1)=1.84, B=1.64, C=0.375+sqrt(ln6/4)=1.04 -> slm0;
    # sim4: A=0.275+sqrt(ln9/4)=1.02, B=0.3+sqrt(ln9)=1.78, C=1.12 -> slm1
    order = []
    for steps, action, n in expanded_paths(b):
        if not order or order[-1] != steps:
            order.append(steps)
    assert order == [(), ("d1-collab0",), ("d1-slm0",), ("d1-slm1",)]
    root = res.root
    a, bb, c = root.children
    assert (a.text, bb.text, c.text) == ("d1-slm0", "d1-slm1", "d1-collab0")
    assert (a.visits, bb.visits, c.visits) == (4, 4, 4)
    assert c.value_sum == pytest.approx(0.9 + 3 * 0.2)
    assert a.value == pytest.approx((0.5 + 0.6) / 4)
    assert root.visits == 12
    assert root.value_sum == pytest.approx(0.5 + 0.3 + 0.9 + 9 * 0.2)
    # invariant: visits = 1 + sum(children) for every non-root node (no terminal revisits here)
    for n in root.iter_nodes():
        if not n.is_root:
            assert n.visits == 1 + sum(ch.visits for ch in n.children)
    assert res.stats["simulations"] == 4 and res.stats["terminal_revisits"] == 0


def test_expansion_issues_both_actions_concurrently_and_scores_in_one_batch():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5, latency_s=0.001)
    run(solve("q", b, cfg(num_simulations=3)))
    calls = b.expand_calls()
    assert [(c[2], c[3]) for c in calls] == [("slm", 2), ("collab", 1)] * 3
    assert b.max_inflight == 2  # slm and collab expansions of a leaf overlap
    # one PRM call per simulation, with all three children of the expansion
    assert [c[1] for c in b.score_calls()] == [3, 3, 3]


def test_both_actions_appear_on_the_chosen_path():
    def reward(q, steps):
        last = steps[-1]
        if last.startswith("d1"):
            return 0.9 if "collab" in last else 0.4
        return 0.9 if "slm0" in last else 0.3

    def step(q, steps, action, i):
        t = labelled_step(q, steps, action, i)
        return (t + " The answer is 5.") if len(steps) == 1 else t

    b = ToyExecutor(step, reward)
    res = run(solve("q", b, cfg(num_simulations=6)))
    assert [s["action"] for s in res.steps] == ["collab", "slm"]
    assert [s["text"] for s in res.steps] == ["d1-collab0", "d2-slm0 The answer is 5."]
    assert res.answer == "5"
    assert res.score == pytest.approx(0.9)
    assert res.cost.llm_calls == sum(1 for c in b.expand_calls("collab"))


# ----------------------------------------------------------------------------------- terminal
def test_terminal_nodes_are_never_expanded_and_revisits_back_up_rewards():
    def step(q, steps, action, i):
        return f"{action}{i}: The answer is {i}."  # every child is terminal

    b = ToyExecutor(step, lambda q, s: 0.8 if s[-1].startswith("collab") else 0.4)
    res = run(solve("q", b, cfg(num_simulations=5)))
    assert len(b.expand_calls()) == 2  # the root only (slm + collab)
    assert res.stats["terminal_revisits"] == 4
    kids = res.root.children
    assert all(k.terminal and not k.children for k in kids)
    assert sum(k.visits for k in kids) == 3 + 4
    assert res.root.visits == 7
    assert res.steps[0]["action"] == "collab" and res.answer == "0"


def test_max_depth_forces_terminal_and_answer_pattern_is_terminal():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5, max_depth=100)
    res = run(solve("q", b, cfg(num_simulations=30, max_depth=2, slm_width=1, collab_width=0)))
    assert max(n.depth for n in res.root.iter_nodes()) == 2
    assert all(n.terminal for n in res.root.iter_nodes() if n.depth == 2)
    assert all(len(c[4]) < 2 for c in b.expand_calls())

    b2 = ToyExecutor(lambda q, s, a, i: "so \\boxed{12}" if len(s) == 1 else f"step{i}", lambda q, s: 0.5,
                    max_depth=100)
    c2 = cfg(num_simulations=10, answer_pattern=r"\\boxed")
    res2 = run(solve("q", b2, c2))
    assert res2.answer == "12" and len(res2.steps) == 2
    assert all(len(c[4]) < 2 for c in b2.expand_calls())


def test_finish_unterminated_extends_best_leaf():
    def step(q, steps, action, i):
        return "The answer is 9." if len(steps) == 3 else f"d{len(steps) + 1}-{action}{i}"

    rewards = {"d1-slm0": 0.4, "d1-slm1": 0.7, "d1-collab0": 0.6}
    b = ToyExecutor(step, table_reward(rewards, 0.5))
    res = run(solve("q", b, cfg(num_simulations=1, finish_unterminated=True)))
    assert [s["text"] for s in res.steps] == ["d1-slm1", "d2-slm0", "d3-slm0", "The answer is 9."]
    assert res.answer == "9"
    assert res.stats["finished_from"] == res.root.children[1].id
    assert len(b.live) == 0
    b = ToyExecutor(step, table_reward(rewards, 0.5))
    res = run(solve("q", b, cfg(num_simulations=1, finish_unterminated=False)))
    assert res.steps == [] and res.answer is None


def test_finish_is_prm_greedy_over_both_actions_within_budget():
    def step(q, steps, action, i):
        return f"{action} The answer is 1." if len(steps) == 4 else f"d{len(steps) + 1}-{action}{i}"

    def reward(q, steps):
        return 0.9 if steps[-1].startswith("d2-collab") or steps[-1].startswith("d4-collab") else 0.5

    b = ToyExecutor(step, reward)
    res = run(solve("q", b, cfg(num_simulations=1, finish_unterminated=True, max_llm_calls=3)))
    # sim 1 used one LLM call (root); the completion has 2 left: depth 2 and 3 get a collab
    # sample (collab wins at depth 2 only), depth 4 and 5 are SLM-only
    assert [s["action"] for s in res.steps] == ["slm", "collab", "slm", "slm", "slm"]
    assert [len(c[4]) for c in b.expand_calls("collab")] == [0, 1, 2]
    assert res.cost.llm_calls == 3 and res.answer == "1"


def test_finish_under_the_gate_policy_asks_the_llm_only_where_the_slm_step_is_weak():
    def step(q, steps, action, i):
        return f"{action} The answer is 1." if len(steps) == 4 else f"d{len(steps) + 1}-{action}{i}"

    def reward(q, steps):  # the SLM is weak at depth 3 only; the collab step there is better
        last = steps[-1]
        if last.startswith("d3-"):
            return 0.8 if "collab" in last else 0.2
        return 0.4 if "collab" in last else 0.9

    b = ToyExecutor(step, reward)
    res = run(solve("q", b, cfg(num_simulations=1, finish_unterminated=True, action_policy="gate",
                                gate_threshold=0.5)))
    # the search's one expansion (root) had strong SLM children: no LLM; the completion asks it
    # at depth 3 only, and takes its step there
    assert [len(c[4]) for c in b.expand_calls("collab")] == [2]
    assert [s["action"] for s in res.steps] == ["slm", "slm", "collab", "slm", "slm"]
    assert res.cost.llm_calls == 1 and res.answer == "1"
    assert len(b.live) == 0
    # with gate_replaces the LLM's step is taken there even when it scores below the SLM's
    low = lambda q, s: 0.1 if s[-1] == "d3-collab0" else reward(q, s)  # noqa: E731
    for replaces, action in ((False, "slm"), (True, "collab")):
        b = ToyExecutor(step, low)
        res = run(solve("q", b, cfg(num_simulations=1, finish_unterminated=True, action_policy="gate",
                                    gate_threshold=0.5, gate_replaces=replaces)))
        assert res.steps[2]["action"] == action and len(b.live) == 0


# ------------------------------------------------------------------------------------ budgets
def test_llm_call_budget_then_slm_only():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5)
    res = run(solve("q", b, cfg(num_simulations=6, collab_width=1, max_llm_calls=2)))
    assert len(b.expand_calls("collab")) == 2
    assert len(b.expand_calls("slm")) == 6
    assert res.cost.llm_calls == 2
    # the first two expansions had collab children, the later ones not
    actions_per_expansion = [{ch.action for ch in n.children} for n in res.root.iter_nodes() if n.children]
    assert sum("collab" in a for a in actions_per_expansion) == 2


def test_llm_call_budget_smaller_than_width_is_clipped():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5)
    res = run(solve("q", b, cfg(num_simulations=3, collab_width=3, max_llm_calls=4)))
    assert [c[3] for c in b.expand_calls("collab")] == [3, 1]
    assert res.cost.llm_calls == 4


def test_llm_token_budget():
    b = ToyExecutor(lambda q, s, a, i: f"{a} {i} w w w w {len(s)}", lambda q, s: 0.5)  # 7 tokens per step
    res = run(solve("q", b, cfg(num_simulations=5, max_llm_tokens=10)))
    # the 1st collab step writes its 7 tokens, the 2nd is granted the 3 left and ends there
    assert len(b.expand_calls("collab")) == 2
    assert res.cost.llm_tokens == 10 and res.cost.llm_generated_tokens == 10
    second = sorted((n for n in res.root.iter_nodes() if n.action == "collab"), key=lambda n: n.id)[1]
    assert second.text == "collab 0 w"  # cut at its share


class ContextPrefillExecutor(ToyExecutor):
    """Measures like EngineExecutor: a collab step also costs the LLM its whole path as prefill."""

    def llm_prefill_tokens(self, parent, toks):
        return len(toks) + parent.n_tokens + 20


def test_the_llm_context_is_counted_apart_from_the_token_budget():
    b = ContextPrefillExecutor(lambda q, s, a, i: f"{a} {i} w w w w {len(s)}", lambda q, s: 0.5)
    res = run(solve("q", b, cfg(num_simulations=5, max_llm_tokens=10)))
    # the budget bounds what the LLM generates (7, then the 3 left); the context it read first
    # (the path and 20 more, each call) is counted, apart: it is not known before the call
    assert len(b.expand_calls("collab")) == 2
    assert res.cost.llm_generated_tokens == 10
    assert res.cost.llm_context_tokens == res.cost.llm_tokens - 10 > 2 * 20


def test_llm_fault_circuit_breaker():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5, fault_fn=lambda q, s, a, i: "llm_timeout")
    res = run(solve("q", b, cfg(num_simulations=6, max_llm_faults=2, dedup_children=False)))
    assert len(b.expand_calls("collab")) == 2
    assert res.cost.llm_faults == {"llm_timeout": 2}
    assert res.cost.llm_tokens == 0  # fallen-back steps are SLM work
    faulted = [n for n in res.root.iter_nodes() if n.fault]
    assert len(faulted) == 2 and all(n.action == "collab" for n in faulted)


# ------------------------------------------------------------------------------- determinism
def _random_reward(q, steps):
    return (sum(map(ord, "".join(steps))) % 97) / 96


def _random_step(q, steps, action, i):
    d = len(steps)
    if d >= 3 and i == 0:
        return f"{action}{i} at {d}: The answer is {sum(map(len, steps)) % 7}."
    return f"{action}{i} at {d} after {len(''.join(steps)) % 5}"


@pytest.mark.parametrize("policy", ["both", "gate", "arms"])
def test_same_seed_same_tree_and_answer(policy):
    def go(seed):
        b = ToyExecutor(_random_step, _random_reward)
        c = cfg(num_simulations=12, seed=seed, action_policy=policy, leaf_parallelism=2)
        r = run(solve("q", b, c))
        return r.answer, to_json(r.root, r.chosen)

    assert go(3) == go(3)


def test_seed_drives_tie_breaking():
    def go(seed):
        b = ToyExecutor(labelled_step, lambda q, s: 0.5)
        run(solve("q", b, cfg(num_simulations=6, seed=seed, uct_c=0.0)))
        return tuple(c[4] for c in b.expand_calls("slm"))

    assert go(1) == go(1)
    assert len({go(s) for s in range(8)}) > 1


def test_early_stop():
    b = ToyExecutor(lambda q, s, a, i: f"{a}{i} The answer is 3.", lambda q, s: 0.95)
    res = run(solve("q", b, cfg(num_simulations=50, early_stop_reward=0.9)))
    assert res.stats["stop_reason"] == "early_stop" and res.stats["simulations"] == 1


def test_ucb_constant_changes_exploration():
    # with c=0 the search is greedy on Q: it keeps deepening the best first child
    rewards = {"d1-slm0": 0.9, "d1-slm1": 0.1, "d1-collab0": 0.1}
    b = ToyExecutor(labelled_step, table_reward(rewards, 0.95))
    run(solve("q", b, cfg(num_simulations=4, uct_c=0.0)))
    assert [len(c[4]) for c in b.expand_calls("slm")] == [0, 1, 2, 3]
    b = ToyExecutor(labelled_step, table_reward(rewards, 0.95))
    run(solve("q", b, cfg(num_simulations=4, uct_c=10.0)))
    order = [c[4] for c in b.expand_calls("slm")]
    assert order[1] == ("d1-slm0",)  # all tied on visits: the best reward first
    assert set(order[2:]) == {("d1-slm1",), ("d1-collab0",)}  # then exploration of the weak ones
