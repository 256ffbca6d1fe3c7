"""G-Boost: Monte Carlo tree search over reasoning steps, two generation actions, PRM values.

One simulation = select -> expand -> evaluate -> backpropagate:

select
    From the root, follow the child with the highest UCT
    (``Q + uct_c * sqrt(ln N_parent / N_child)``, ties broken by ``random.Random(seed)``)
    until an unexpanded node or a terminal node.  With ``leaf_parallelism > 1``
    several leaves are selected per round: virtual losses on the paths in flight
    steer later picks elsewhere, and a picked leaf (and any ancestor with nothing
    else to offer) is blocked for the rest of the round, so picks are distinct.
expand
    The leaf gets children from the actions -- ``slm_width`` SLM samples,
    ``collab_width`` SLM+LLM fused samples and ``delegate_width`` steps the LLM writes
    alone -- as decided by ``action_policy``
    (see engine/search/config.py).  All expansion calls of a round run
    concurrently (``asyncio.gather``) so the executor batches the frontier.
    Children are terminal when the executor says so, when the step matches
    ``answer_pattern``, or at ``max_depth``.  Siblings with duplicate text are
    dropped (``dedup_children``).
evaluate
    One batched ``score`` call for all new children of the round; the PRM
    reward of a step is the child's value (no rollouts).
backpropagate
    Each new child's reward is added as one visit to the child and all its
    ancestors (running means, see engine/search/tree.py).  Selecting a terminal
    node again backs its reward up once more (no executor call).

Budgets: before each round the request's LLM quota is computed from
``max_llm_calls`` / ``max_llm_tokens`` / ``max_llm_faults``; once it is spent only
SLM children are generated.  After the simulations, if no terminal node exists
and ``finish_unterminated`` is set, the best open leaf is completed greedily:
per step one SLM and (budget permitting) one collab and one delegated sample (those
with a width), the PRM keeps the best one.  The answer comes from the best terminal path
(``final_choice``/``prm_aggregation``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .config import SearchConfig
from .final import choose_final, terminals
from .tree import Node, path_score, select_child

if TYPE_CHECKING:
    from .api import SearchContext

__all__ = ["run_gboost"]

#: the LLM actions an expansion may add to its SLM children, in the order the LLM quota goes to them
LLM_ARMS = ("collab", "delegate")
ARMS = ("slm",) + LLM_ARMS  # cheapest first: ties between arms go to the cheaper


def _width(cfg: SearchConfig, action: str) -> int:
    return cfg.collab_width if action == "collab" else cfg.delegate_width


def _llm_widths(cfg: SearchConfig, quota: int) -> list[tuple[str, int]]:
    """(action, children) of each LLM action an expansion asks for now, cut to the quota."""
    out = []
    for action in LLM_ARMS:
        n = min(_width(cfg, action), quota)
        quota -= n
        out.append((action, n))
    return out


# --------------------------------------------------------------------------------- MCTS
def _arm_stats(node: Node, action: str) -> tuple[int, float, list[Node]]:
    kids = [c for c in node.children if c.action == action and not c.pruned]
    return sum(k.visits + k.vloss for k in kids), sum(k.value_sum for k in kids), kids


def _select(ctx: SearchContext, root: Node, quota: int,
            blocked: set[int]) -> tuple[Node, str | None] | None:
    """Descend by UCT, avoiding ``blocked`` nodes (picked earlier in this round).

    Returns (node, arm) -- ``arm`` is the action to expand for policy 'arms' -- or
    None when every candidate is blocked.
    """
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
            free = [ch for ch in node.children if ch.id not in blocked and not ch.pruned]
            if not free:
                return None
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
            elif _arm_width(cfg, action, quota) > 0:
                cands.append((cfg.arm_fpu + cfg.uct_c * math.sqrt(explore), -rank, action, []))
        if not cands:
            return None if node.children else (node, "slm")
        _, _, arm, free = max(cands, key=lambda t: (t[0], t[1]))  # ties: the cheaper action first
        if arm not in node.expanded_actions:
            return node, arm
        node = select_child(node, cfg.uct_c, ctx.rng, among=free)


def _block(ctx: SearchContext, leaf: Node, blocked: set[int], quota: int) -> None:
    """Block a picked leaf, and every ancestor that has nothing unblocked left to offer."""
    blocked.add(leaf.id)
    node = leaf.parent
    while node is not None:
        if any(ch.id not in blocked for ch in node.children if not ch.pruned):
            return
        if ctx.cfg.action_policy == "arms" and any(
                a not in node.expanded_actions and _arm_width(ctx.cfg, a, quota) > 0 for a in ARMS):
            return
        blocked.add(node.id)
        node = node.parent


def _arm_width(cfg: SearchConfig, action: str, quota: int) -> int:
    """Children an expansion of this arm would request now (0: arm unavailable)."""
    if action in LLM_ARMS:
        return min(_width(cfg, action), quota)
    if cfg.slm_width > 0:
        return cfg.slm_width
    # SLM is the fallback when no LLM action can run
    return 1 if all(n == 0 for _, n in _llm_widths(cfg, quota)) else 0


def _plan_both(cfg: SearchConfig, leaf: Node, quota: int) -> list[tuple[Node, str, int]]:
    llm = _llm_widths(cfg, quota)
    n_slm = cfg.slm_width if (cfg.slm_width > 0 or any(n for _, n in llm)) else 1
    return [(leaf, "slm", n_slm)] + [(leaf, a, n) for a, n in llm]


async def run_gboost(ctx: SearchContext) -> Node | None:
    cfg = ctx.cfg
    root = await ctx.make_root()
    done = 0
    while done < cfg.num_simulations:
        ctx.stats["rounds"] += 1
        k = min(cfg.leaf_parallelism, cfg.num_simulations - done)
        quota = ctx.llm_quota()
        # ---- select (virtual loss keeps parallel picks apart)
        picks: list[tuple[Node, str | None]] = []
        blocked: set[int] = set()
        with ctx.cost.timed("select"):
            for _ in range(k):
                got = _select(ctx, root, quota, blocked)
                if got is None:
                    break
                leaf, arm = got
                picks.append((leaf, arm))
                node: Node | None = leaf
                while node is not None:
                    node.vloss += 1
                    node = node.parent
                if arm in LLM_ARMS:
                    quota -= _arm_width(cfg, arm, quota)
                _block(ctx, leaf, blocked, quota)
            for n in root.iter_nodes():
                n.vloss = 0
        done += len(picks)
        ctx.stats["simulations"] += len(picks)
        # ---- terminal revisits: back the reward up again
        expand_leaves: list[tuple[Node, str | None]] = []
        for leaf, arm in picks:
            if leaf.terminal:
                ctx.stats["terminal_revisits"] += 1
                leaf.backpropagate(leaf.reward if leaf.reward is not None else 0.0)
            else:
                expand_leaves.append((leaf, arm))
        if not expand_leaves:
            if root.terminal:
                ctx.stats["stop_reason"] = "root_exhausted"
                break
            continue
        new_children = await _expand_round(ctx, expand_leaves)
        # ---- backpropagate, in creation order
        for child in new_children:
            child.backpropagate(child.reward if child.reward is not None else 0.0)
        for leaf, _ in expand_leaves:
            if not leaf.children:  # expansion produced nothing: a dead end
                leaf.exhausted = leaf.terminal = True
                if not leaf.is_root:
                    leaf.backpropagate(leaf.reward if leaf.reward is not None else 0.0)
        if cfg.early_stop_reward is not None and any(
                c.terminal and ctx.has_answer(c) and path_score(c, cfg.prm_aggregation) >= cfg.early_stop_reward
                for c in new_children):
            ctx.stats["stop_reason"] = "early_stop"
            break
    if ctx.stats["stop_reason"] is None:
        ctx.stats["stop_reason"] = "simulations"
    if cfg.finish_unterminated:
        await _finish(ctx, root)
    with ctx.cost.timed("final"):
        return choose_final(ctx, root)


async def _expand_round(ctx: SearchContext, leaves: list[tuple[Node, str | None]]) -> list[Node]:
    """Expand the selected leaves per the action policy; score all new children (batched)."""
    cfg = ctx.cfg
    quota = ctx.llm_quota()
    policy = cfg.action_policy
    if policy == "arms":
        reqs = []
        for leaf, arm in leaves:
            arm = arm or "slm"
            if arm in LLM_ARMS:
                n = _arm_width(cfg, arm, quota)
                quota -= n
                if n == 0:  # quota vanished since selection: fall back to the SLM
                    arm, n = "slm", max(1, cfg.slm_width)
            else:
                n = _arm_width(cfg, "slm", quota) or 1
            reqs.append((leaf, arm, n))
        new = [c for kids in await ctx.expand(reqs) for c in kids]
        await ctx.score(new)
        return new
    if policy == "both":
        reqs = []
        for leaf, _ in leaves:
            plan = _plan_both(cfg, leaf, quota)
            quota -= sum(n for _, a, n in plan if a != "slm")
            reqs.extend(plan)
        new = [c for kids in await ctx.expand(reqs) for c in kids]
        await ctx.score(new)
        return new
    # gate: SLM first, the LLM actions only where the best SLM child is weak
    first: list[Node] = []
    slm_kids: list[list[Node]] = [[] for _ in leaves]
    if cfg.slm_width > 0:
        slm_kids = await ctx.expand([(leaf, "slm", cfg.slm_width) for leaf, _ in leaves])
        first = [c for kids in slm_kids for c in kids]
        await ctx.score(first)
    reqs = []
    for (leaf, _), kids in zip(leaves, slm_kids):
        if _gate_opens(cfg, kids):
            llm = [(a, n) for a, n in _llm_widths(cfg, quota) if n > 0]
            quota -= sum(n for _, n in llm)
            if not llm and not kids:
                reqs.append((leaf, "slm", 1))
            reqs.extend((leaf, a, n) for a, n in llm)
    second = [c for kids in await ctx.expand(reqs) for c in kids] if reqs else []
    await ctx.score(second)
    if cfg.gate_replaces:
        first = [c for c in first if not _replaced(ctx, c, second)]
    return first + second


def _gate_opens(cfg: SearchConfig, slm_kids: list[Node]) -> bool:
    """gate: the LLM is asked where no SLM child scores gate_threshold (or there is none)."""
    return max((c.reward or 0.0 for c in slm_kids), default=-1.0) < cfg.gate_threshold


def _replaced(ctx: SearchContext, slm_child: Node, llm_children: list[Node]) -> bool:
    """gate_replaces: prune an SLM child whose parent got an LLM child in its place. A faulted
    LLM child was written by the SLM as a fallback: it replaces nothing."""
    if not any(c.parent is slm_child.parent and c.action != "slm" and not c.fault for c in llm_children):
        return False
    ctx.prune(slm_child)
    return True


async def _finish(ctx: SearchContext, root: Node) -> None:
    """No terminal node yet: complete the best open leaf greedily, one step at a time.

    Each completion step samples one SLM child and -- for each LLM action with a width, while
    the LLM budget allows -- one child of it, concurrently; the PRM picks the best (ties: SLM).
    Under ``action_policy = "gate"`` the LLM children come only where the SLM child scores
    below ``gate_threshold``, as in the search itself (the rule users chose to bound LLM spend).
    """
    if next(terminals(root), None) is not None:
        return
    how = ctx.cfg.prm_aggregation
    leaves = [n for n in root.iter_nodes() if not n.is_root and n.is_leaf and not n.terminal and not n.pruned]
    if not leaves:
        return
    node = max(leaves, key=lambda n: (path_score(n, how), n.depth, -n.id))
    ctx.stats["finished_from"] = node.id
    with ctx.cost.timed("finish"):
        gated = ctx.cfg.action_policy == "gate"
        while not node.terminal:
            kids: list[Node] = []
            if gated:
                kids = (await ctx.expand([(node, "slm", 1)]))[0]
                await ctx.score(kids)
            reqs = [] if gated else [(node, "slm", 1)]
            if _gate_opens(ctx.cfg, kids):  # (kids is empty unless gated)
                quota = ctx.llm_quota()
                for action in LLM_ARMS:
                    if _width(ctx.cfg, action) > 0 and quota > 0:
                        reqs.append((node, action, 1))
                        quota -= 1
            more = [c for cs in await ctx.expand(reqs) for c in cs] if reqs else []
            await ctx.score(more)
            if ctx.cfg.gate_replaces:
                kids = [c for c in kids if not _replaced(ctx, c, more)]
            kids += more
            if not kids:
                node.exhausted = node.terminal = True
                break
            for c in kids:
                c.backpropagate(c.reward or 0.0)
            node = max(kids, key=lambda c: (c.reward or 0.0, -c.id))
