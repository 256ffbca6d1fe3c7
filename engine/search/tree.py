"""Search tree: nodes, UCT, backpropagation, path aggregation (the final choice is final.py).

Value convention (G-Boost: the PRM score of a step *is* the node's evaluation, no
rollouts): when a node is created and scored it gets ``visits = 1`` and
``value_sum = reward``, and the reward is backed up to every ancestor (each
ancestor's ``visits += 1``, ``value_sum += reward``).  Selecting a terminal node
again backs its reward up once more.  Hence, without terminal revisits,

    node.visits == 1 + sum(child.visits)         (root: sum(child.visits))
    node.value   == mean PRM reward of the node's subtree

so Q in UCT is a running mean of step rewards below the node.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = ["Node", "uct_score", "select_child", "aggregate", "path_score", "ROOT_ACTION"]

ROOT_ACTION = "root"


class _Ids:
    """Shared node-id counter of one tree (ids are creation order, root = 0)."""

    __slots__ = ("next",)

    def __init__(self) -> None:
        self.next = 0

    def take(self) -> int:
        i = self.next
        self.next += 1
        return i


@dataclass(eq=False)
class Node:
    text: str = ""                      #: the step text ("" for the root)
    token_ids: list[int] = field(default_factory=list)
    action: str = ROOT_ACTION           #: an action of search/actions.py, or "root"
    reward: float | None = None         #: PRM reward of this step (None: root / not scored)
    visits: int = 0
    value_sum: float = 0.0
    children: list["Node"] = field(default_factory=list)
    parent: "Node | None" = None
    state: Any = None                   #: executor handle (released when the request ends)
    terminal: bool = False
    depth: int = 0                      #: number of steps from the root (root = 0)
    fault: str | None = None            #: executor fault reported for this step
    id: int = 0
    pruned: bool = False                #: discarded by a baseline (beam/rsd); kept for the trace
    exhausted: bool = False             #: expansion produced no child (treated as terminal)
    vloss: int = 0                      #: virtual visits of selections in flight (leaf parallelism)
    expanded_actions: set[str] = field(default_factory=set)
    drawn: dict[str, int] = field(default_factory=dict)  #: samples asked of each action so far (the next index)
    _ids: _Ids = field(default_factory=_Ids, repr=False)

    # ---------------------------------------------------------------- construction
    @classmethod
    def new_root(cls, state: Any = None, text: str = "") -> "Node":
        ids = _Ids()
        return cls(text=text, state=state, id=ids.take(), _ids=ids)

    def add_child(self, text: str, token_ids: Sequence[int] | None = None, action: str = "slm", *,
                  state: Any = None, terminal: bool = False, fault: str | None = None,
                  reward: float | None = None) -> "Node":
        child = Node(text=text, token_ids=list(token_ids or []), action=action, reward=reward,
                     parent=self, state=state, terminal=terminal, depth=self.depth + 1,
                     fault=fault, id=self._ids.take(), _ids=self._ids)
        self.children.append(child)
        return child

    # ---------------------------------------------------------------- statistics
    @property
    def step_reward(self) -> float:
        """The step's PRM reward, as every rule reads it: an unscored step counts as 0."""
        return self.reward if self.reward is not None else 0.0

    def back_up(self) -> None:
        """One visit of this step's reward for it and every ancestor."""
        self.backpropagate(self.step_reward)

    @property
    def value(self) -> float:
        """Mean backed-up value (0.0 before the first visit)."""
        return self.value_sum / self.visits if self.visits else 0.0

    @property
    def is_root(self) -> bool:
        return self.parent is None

    @property
    def is_leaf(self) -> bool:
        return not self.children

    def backpropagate(self, value: float) -> None:
        """Add one visit with ``value`` to this node and every ancestor."""
        node: Node | None = self
        while node is not None:
            node.visits += 1
            node.value_sum += value
            node = node.parent

    # ---------------------------------------------------------------- navigation
    def path(self) -> list["Node"]:
        """Nodes from the first step down to this node (the root excluded)."""
        out: list[Node] = []
        node: Node | None = self
        while node is not None and node.parent is not None:
            out.append(node)
            node = node.parent
        out.reverse()
        return out

    def rewards(self) -> list[float]:
        return [n.step_reward for n in self.path()]

    def iter_nodes(self) -> Iterator["Node"]:
        """Pre-order traversal (children in creation order)."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def size(self) -> int:
        return sum(1 for _ in self.iter_nodes())

    def solution_text(self, delimiter: str = "\n\n") -> str:
        return delimiter.join(n.text for n in self.path())

    def __repr__(self) -> str:  # compact; the dataclass repr would recurse through children
        r = "None" if self.reward is None else f"{self.reward:.3f}"
        return (f"Node(id={self.id}, depth={self.depth}, action={self.action}, reward={r}, "
                f"visits={self.visits}, value={self.value:.3f}, terminal={self.terminal}, "
                f"children={len(self.children)}, text={self.text[:40]!r})")


# --------------------------------------------------------------------------- selection
def uct_score(child: Node, parent_visits: int, c: float) -> float:
    """UCT = Q + c * sqrt(ln N_parent / N_child), counting virtual visits as losses (value 0).

    An unvisited child scores +inf (it is tried first).
    """
    n = child.visits + child.vloss
    if n == 0:
        return math.inf
    q = child.value_sum / n
    return q + c * math.sqrt(math.log(max(1, parent_visits)) / n)


def select_child(node: Node, c: float, rng: random.Random,
                 among: Sequence[Node] | None = None) -> Node:
    """The child (of ``among``, default all children) with the highest UCT; ties broken by ``rng``."""
    cands = list(node.children if among is None else among)
    if not cands:
        raise ValueError("select_child on a node without children")
    n_parent = node.visits + node.vloss
    scores = [uct_score(ch, n_parent, c) for ch in cands]
    best = max(scores)
    tied = [ch for ch, s in zip(cands, scores) if s == best or (math.isfinite(best) and best - s <= 1e-12)]
    return tied[0] if len(tied) == 1 else rng.choice(tied)


# ---------------------------------------------------------------------- aggregation
def aggregate(rewards: Sequence[float], how: str) -> float:
    """Aggregate step rewards of a path: last | min | prod | mean (empty path -> 0.0)."""
    if not rewards:
        return 0.0
    if how == "last":
        return float(rewards[-1])
    if how == "min":
        return float(min(rewards))
    if how == "prod":
        return float(math.prod(rewards))
    if how == "mean":
        return float(sum(rewards) / len(rewards))
    raise ValueError(f"unknown PRM aggregation {how!r}")


def path_score(node: Node, how: str) -> float:
    return aggregate(node.rewards(), how)
