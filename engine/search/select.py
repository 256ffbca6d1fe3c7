"""Selection for G-Boost: descend by UCT to the leaves a round expands.

With ``leaf_parallelism > 1`` several leaves are picked per round: virtual losses on the paths in
flight steer later picks elsewhere, and a picked leaf (and any ancestor with nothing else to offer)
is blocked for the rest of the round, so picks are distinct. Under ``action_policy = "arms"`` the
actions are UCT arms at each node, and a pick names the arm to expand. With ``simulate_to_terminal``
a subtree whose every path has ended is passed over (its solutions are written).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .actions import EXPANSION_LLM_ACTIONS, width
from .config import SearchConfig
from .tree import Node, select_child

if TYPE_CHECKING:
    from .context import SearchContext

__all__ = ["ARMS", "Pick", "select_leaves", "llm_widths", "arm_width"]

ARMS = ("slm",) + EXPANSION_LLM_ACTIONS  # cheapest first: ties between arms go to the cheaper
Pick = tuple[Node, "str | None"]          # a leaf, and the arm to expand (policy arms only)


def llm_widths(cfg: SearchConfig, quota: int) -> list[tuple[str, int]]:
    """(action, children) of each LLM action an expansion asks for now, cut to the quota."""
    out = []
    for action in EXPANSION_LLM_ACTIONS:
        n = min(width(cfg, action), quota)
        quota -= n
        out.append((action, n))
    return out


def arm_width(cfg: SearchConfig, action: str, quota: int) -> int:
    """Children an expansion of this arm would request now (0: arm unavailable)."""
    if action != "slm":
        return min(width(cfg, action), quota)
    if cfg.slm_width > 0:
        return cfg.slm_width
    # SLM is the fallback when no LLM action can run
    return 1 if all(n == 0 for _, n in llm_widths(cfg, quota)) else 0


def select_leaves(ctx: SearchContext, root: Node, k: int) -> list[Pick]:
    """Up to ``k`` distinct picks for this round (fewer when every candidate is blocked)."""
    cfg, quota = ctx.cfg, ctx.llm_quota()
    picks: list[Pick] = []
    blocked: set[int] = set()
    for _ in range(k):
        got = _descend(ctx, root, quota, blocked)
        if got is None:
            break
        picks.append(got)
        leaf, arm = got
        node: Node | None = leaf
        while node is not None:
            node.vloss += 1
            node = node.parent
        if arm is not None and arm != "slm":
            quota -= arm_width(cfg, arm, quota)
        _block(cfg, leaf, blocked, quota)
    for n in root.iter_nodes():
        n.vloss = 0
    return picks


def _arm_stats(node: Node, action: str) -> tuple[int, float, list[Node]]:
    kids = [c for c in node.children if c.action == action and not c.pruned]
    return sum(k.visits + k.vloss for k in kids), sum(k.value_sum for k in kids), kids


def _descend(ctx: SearchContext, root: Node, quota: int, blocked: set[int]) -> Pick | None:
    """Descend by UCT, avoiding ``blocked`` nodes; None when every candidate is blocked."""
    cfg = ctx.cfg
    node = root
    while True:
        if node.id in blocked:
            return None
        if node.terminal:
            return node, None
        if cfg.action_policy != "arms":
            if not node.children:
                return node, None
            kids = [ch for ch in node.children if not ch.pruned]
            free = [ch for ch in kids if ch.id not in blocked and not (cfg.simulate_to_terminal and not _open(cfg, ch))]
            if not free:  # every path below has ended: draw new samples here, if it may
                return (node, None) if widens(cfg, node) and not any(ch.id in blocked for ch in kids) else None
            node = select_child(node, cfg.uct_c, ctx.rng, among=free)
            continue
        # actions as UCT arms
        explore = math.log(max(1, node.visits + node.vloss))
        cands: list[tuple[float, int, str, list[Node]]] = []
        for rank, action in enumerate(ARMS):
            n_a, w_a, kids = _arm_stats(node, action)
            if action in node.expanded_actions:
                free = [k for k in kids if k.id not in blocked]
                if free and n_a > 0:
                    cands.append((w_a / n_a + cfg.uct_c * math.sqrt(explore / n_a), -rank, action, free))
            elif arm_width(cfg, action, quota) > 0:
                cands.append((cfg.arm_fpu + cfg.uct_c * math.sqrt(explore), -rank, action, []))
        if not cands:
            return None if node.children else (node, "slm")
        _, _, arm, free = max(cands, key=lambda t: (t[0], t[1]))  # ties: the cheaper action first
        if arm not in node.expanded_actions:
            return node, arm
        node = select_child(node, cfg.uct_c, ctx.rng, among=free)


def widens(cfg: SearchConfig, node: Node) -> bool:
    """With simulate_to_terminal, a node whose paths have all ended may draw new SLM samples
    (its policy's expansion again, the next sample indices) until it has drawn ``widen_to``."""
    return (cfg.simulate_to_terminal and not node.terminal and node.children != []
            and node.drawn.get("slm", 0) < cfg.widen_to)


def _open(cfg: SearchConfig, node: Node) -> bool:
    """Some leaf below ``node`` can still be expanded, or a node there widened. With
    simulate_to_terminal a simulation that reached a terminal wrote its solution: selection goes
    where a new one can start."""
    if node.terminal:
        return False
    kids = [c for c in node.children if not c.pruned]
    return not kids or widens(cfg, node) or any(_open(cfg, c) for c in kids)


def _block(cfg: SearchConfig, leaf: Node, blocked: set[int], quota: int) -> None:
    """Block a picked leaf, and every ancestor that has nothing unblocked left to offer."""
    blocked.add(leaf.id)
    node = leaf.parent
    while node is not None:
        if any(ch.id not in blocked for ch in node.children if not ch.pruned):
            return
        if cfg.action_policy == "arms" and any(
                a not in node.expanded_actions and arm_width(cfg, a, quota) > 0 for a in ARMS):
            return
        blocked.add(node.id)
        node = node.parent
