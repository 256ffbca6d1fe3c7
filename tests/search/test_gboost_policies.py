"""G-Boost's action policies (both, gate, arms, gate_replaces) and delegated children, on a
scripted, model-free backend."""

from gboost.search.api import solve
from toy_executor import ToyExecutor
from _gboost_script import cfg, labelled_step, run


# ---------------------------------------------------------------------------------- policies
def test_gate_policy_uses_collab_only_below_threshold():
    def reward(q, steps):
        last = steps[-1]
        if "collab" in last:
            return 0.6
        return 0.3 if last.startswith("d1") else 0.9  # weak SLM at depth 1 only

    b = ToyExecutor(labelled_step, reward)
    res = run(solve("q", b, cfg(num_simulations=3, action_policy="gate", gate_threshold=0.5)))
    collab_depths = [len(c[4]) for c in b.expand_calls("collab")]
    assert collab_depths == [0]  # only the root's SLM children were weak
    assert len(b.expand_calls("slm")) == 3
    assert res.cost.llm_calls == 1


class LiveAtExpand(ToyExecutor):
    """Records which states (by their steps) are live at each SLM expansion."""

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.live_at_expand: list[set[int]] = []

    async def expand(self, state, action, n, first=0):
        if action == "slm":
            self.live_at_expand.append({st.steps for st in self.live.values()})
        return await super().expand(state, action, n, first)


def test_gate_replaces_prunes_the_weak_slm_children_where_the_llm_wrote_a_step():
    def reward(q, steps):  # the SLM is weak at depth 1; the LLM's step scores below it there
        last = steps[-1]
        if last.startswith("d1"):
            return 0.2 if "collab" in last else 0.3
        return 0.9

    for replaces in (False, True):
        b = LiveAtExpand(labelled_step, reward)
        res = run(solve("q", b, cfg(num_simulations=3, uct_c=0.0, action_policy="gate", gate_threshold=0.5,
                                    gate_replaces=replaces)))
        live = [c.text for c in res.root.children if not c.pruned]
        if not replaces:  # the weak SLM children outscore the LLM's and are followed
            assert live == ["d1-slm0", "d1-slm1", "d1-collab0"]
            assert b.expand_calls("slm")[1][4][0].startswith("d1-slm")
            continue
        assert live == ["d1-collab0"]
        assert [c[4][:1] for c in b.expand_calls("slm")] == [(), ("d1-collab0",), ("d1-collab0",)]
        pruned = [c for c in res.root.children if c.pruned]
        assert len(pruned) == 2 and all(c.visits == 1 for c in pruned)
        followed = [n for n in res.root.iter_nodes() if not n.is_root and not n.pruned]
        assert res.root.visits == len(followed) == 5  # the pruned children were never backed up
        # released at once: the next expansion already runs without them
        assert ("d1-collab0",) in b.live_at_expand[1] and len(b.live) == 0
        assert not {("d1-slm0",), ("d1-slm1",)} & b.live_at_expand[1]


def test_gate_replaces_keeps_the_slm_children_when_the_llm_fails():
    b = ToyExecutor(labelled_step, lambda q, s: 0.3, fault_fn=lambda q, s, a, i: "llm_timeout")
    res = run(solve("q", b, cfg(num_simulations=2, action_policy="gate", gate_threshold=0.5,
                                gate_replaces=True, dedup_children=False)))
    assert not any(c.pruned for c in res.root.iter_nodes())
    assert {c.action for c in res.root.children if not c.fault} == {"slm"}


def test_arms_policy_tries_collab_only_when_slm_arm_is_weak():
    strong = ToyExecutor(labelled_step, lambda q, s: 0.2 if "collab" in s[-1] else 0.9)
    run(solve("q", strong, cfg(num_simulations=6, action_policy="arms", uct_c=0.0, arm_fpu=0.5)))
    assert strong.expand_calls("collab") == []

    weak = ToyExecutor(labelled_step, lambda q, s: 0.9 if "collab" in s[-1] else 0.1)
    res = run(solve("q", weak, cfg(num_simulations=3, action_policy="arms", uct_c=0.0, arm_fpu=0.5)))
    calls = [(c[4], c[2]) for c in weak.expand_calls()]
    # root: slm arm first (cheaper on ties); its mean 0.1 < fpu 0.5 -> collab arm of the root;
    # then the collab child (0.9) is the best node and gets its slm arm
    assert calls == [((), "slm"), ((), "collab"), (("d1-collab0",), "slm")]
    assert {ch.action for ch in res.root.children} == {"slm", "collab"}


# ------------------------------------------------------------------------- delegated children
def test_both_policy_adds_delegated_children_and_the_llm_quota_goes_to_collab_first():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5)
    res = run(solve("q", b, cfg(num_simulations=4, collab_width=1, delegate_width=1, max_llm_calls=3)))
    # expansion 1: collab + delegate (2 calls); expansion 2: the last call goes to collab; then SLM only
    assert [len(c[4]) for c in b.expand_calls("collab")] == [0, 1]
    assert [len(c[4]) for c in b.expand_calls("delegate")] == [0]
    assert len(b.expand_calls("slm")) == 4 and res.cost.llm_calls == 3
    assert {ch.action for ch in res.root.children} == {"slm", "collab", "delegate"}


def test_the_prm_chooses_a_delegated_step_when_it_scores_best():
    b = ToyExecutor(labelled_step, lambda q, s: 0.9 if "delegate" in s[-1] else 0.3)
    res = run(solve("q", b, cfg(num_simulations=4, collab_width=0, delegate_width=1, uct_c=0.0, max_depth=3,
                                finish_unterminated=True)))
    assert [s["action"] for s in res.steps] == ["delegate"] * 3


def test_gate_and_arms_policies_treat_delegated_children_as_llm_children():
    def reward(q, steps):
        return 0.6 if "delegate" in steps[-1] else (0.3 if steps[-1].startswith("d1") else 0.9)
    b = ToyExecutor(labelled_step, reward)
    run(solve("q", b, cfg(num_simulations=3, action_policy="gate", gate_threshold=0.5, collab_width=0,
                          delegate_width=1)))
    assert [len(c[4]) for c in b.expand_calls("delegate")] == [0] and b.expand_calls("collab") == []

    weak = ToyExecutor(labelled_step, lambda q, s: 0.9 if "delegate" in s[-1] else 0.1)
    run(solve("q", weak, cfg(num_simulations=3, action_policy="arms", uct_c=0.0, arm_fpu=0.5, collab_width=0,
                             delegate_width=1)))
    assert [(c[4], c[2]) for c in weak.expand_calls()] == [((), "slm"), ((), "delegate"),
                                                          (("d1-delegate0",), "slm")]


def test_leaf_parallelism_expands_distinct_leaves_in_one_round():
    b = ToyExecutor(labelled_step, lambda q, s: 0.5)
    res = run(solve("q", b, cfg(num_simulations=5, leaf_parallelism=2)))
    # rounds: [root], [2 leaves], [2 leaves]
    assert res.stats["rounds"] == 3 and res.stats["simulations"] == 5
    assert [c[1] for c in b.score_calls()] == [3, 6, 6]
    assert b.max_inflight == 4
    # round 2 took two different depth-1 children; round 3 the last depth-1 child and one
    # grandchild (the virtual loss / blocking keeps the picks of a round apart)
    assert [len(c[4]) for c in b.expand_calls("slm")] == [0, 1, 1, 1, 2]
    assert len({c[4] for c in b.expand_calls()}) == 5  # no leaf expanded twice


def test_duplicate_siblings_are_dropped_released_and_not_scored():
    b = ToyExecutor(lambda q, s, a, i: f"same {len(s)}", lambda q, s: 0.5)
    res = run(solve("q", b, cfg(num_simulations=2)))
    assert [len(n.children) for n in res.root.iter_nodes()][:2] == [1, 1]
    assert [c[1] for c in b.score_calls()] == [1, 1]
    assert res.stats["dedup_dropped"] == 4
    assert b.n_created == b.n_released and not b.live


def test_rewards_are_sanitised():
    vals = iter([float("nan"), 1.7, -3.0])
    b = ToyExecutor(labelled_step, lambda q, s: 0.5)

    async def bad_score(states):
        return [next(vals) for _ in states]

    b.score = bad_score
    res = run(solve("q", b, cfg(num_simulations=1)))
    assert [ch.reward for ch in res.root.children] == [0.0, 1.0, 0.0]
