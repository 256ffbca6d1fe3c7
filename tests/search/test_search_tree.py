import math
import random

import pytest

from gboost.search.final import Candidate, pick_final, terminals
from gboost.search.tree import Node, aggregate, path_score, select_child, uct_score


def _tree():
    root = Node.new_root()
    a = root.add_child("a", [1], "slm", reward=0.9)
    b = root.add_child("b", [2], "collab", reward=0.6)
    a1 = a.add_child("a1 The answer is 1", [3], "slm", reward=0.2, terminal=True)
    b1 = b.add_child("b1 The answer is 2", [4], "collab", reward=0.7, terminal=True)
    return root, a, b, a1, b1


def test_ids_are_creation_order_and_paths():
    root, a, b, a1, b1 = _tree()
    assert [n.id for n in root.iter_nodes()] == [0, 1, 3, 2, 4]  # pre-order, ids = creation order
    assert b1.path() == [b, b1]
    assert root.path() == []
    assert b1.depth == 2 and a.depth == 1 and root.depth == 0
    assert b1.solution_text("|") == "b|b1 The answer is 2"
    assert root.size() == 5


def test_uct_score_formula():
    parent = Node.new_root()
    ch = parent.add_child("x")
    assert uct_score(ch, 5, 1.0) == math.inf  # unvisited first
    ch.visits, ch.value_sum = 2, 1.0
    assert uct_score(ch, 5, 1.0) == pytest.approx(0.5 + math.sqrt(math.log(5) / 2))
    assert uct_score(ch, 5, 0.0) == pytest.approx(0.5)
    ch.vloss = 2  # virtual losses count as visits of value 0
    assert uct_score(ch, 5, 0.0) == pytest.approx(0.25)


def test_select_child_prefers_higher_uct_and_breaks_ties_with_rng():
    root = Node.new_root()
    kids = [root.add_child(t) for t in "abc"]
    for k, v in zip(kids, (0.2, 0.8, 0.5)):
        k.visits, k.value_sum = 1, v
    root.visits = 3
    assert select_child(root, 1.0, random.Random(0)) is kids[1]
    for k in kids:
        k.value_sum = 0.5
    picks = {select_child(root, 1.0, random.Random(s)).id for s in range(20)}
    assert picks == {1, 2, 3}  # every tied child can win
    assert select_child(root, 1.0, random.Random(7)) is select_child(root, 1.0, random.Random(7))


def test_backpropagate_running_means():
    root, a, b, a1, b1 = _tree()
    for n in (a, b, a1, b1):
        n.backpropagate(n.reward)
    assert (root.visits, a.visits, a1.visits) == (4, 2, 1)
    assert a.value == pytest.approx((0.9 + 0.2) / 2)
    assert root.value == pytest.approx((0.9 + 0.6 + 0.2 + 0.7) / 4)


def test_aggregate():
    r = [0.9, 0.5, 0.8]
    assert aggregate(r, "last") == 0.8
    assert aggregate(r, "min") == 0.5
    assert aggregate(r, "prod") == pytest.approx(0.36)
    assert aggregate(r, "mean") == pytest.approx(2.2 / 3)
    assert aggregate([], "min") == 0.0
    with pytest.raises(ValueError):
        aggregate(r, "max")


def best_terminal(root, how, has_answer=lambda n: True):
    """best_path's choice over a tree's terminals (the rule of engine/search/final.py)."""
    nodes = {n.id: n for n in terminals(root)}
    got = pick_final([Candidate(n.id, tuple(n.rewards()), n.visits, has_answer(n), None)
                      for n in nodes.values()], "best_path", how)
    return None if got is None else nodes[got.id]


def test_best_terminal_depends_on_aggregation():
    root, a, b, a1, b1 = _tree()
    # path a: [0.9, 0.2]   path b: [0.6, 0.7]
    assert best_terminal(root, "min") is b1
    assert best_terminal(root, "last") is b1
    assert best_terminal(root, "mean") is b1  # 0.65 vs 0.55
    a1.reward = 0.75
    assert best_terminal(root, "last") is a1
    assert best_terminal(root, "min") is a1      # min(0.9, 0.75) = 0.75 > min(0.6, 0.7)
    assert best_terminal(root, "prod") is a1     # 0.675 > 0.42
    assert path_score(a1, "min") == pytest.approx(0.75)


def test_best_terminal_prefers_answers_and_skips_pruned():
    root, a, b, a1, b1 = _tree()
    capped = a.add_child("ran out of depth", reward=1.0, terminal=True)
    assert best_terminal(root, "last") is capped
    assert best_terminal(root, "last", has_answer=lambda n: "answer" in n.text) is b1
    capped.pruned = True
    assert best_terminal(root, "last") is b1
    assert best_terminal(Node.new_root(), "min") is None
