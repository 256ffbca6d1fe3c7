"""G-Boost: Monte Carlo tree search over reasoning steps, written by the table's actions, PRM values.

One round = select -> expand -> evaluate -> backpropagate:

select
    Descend by UCT (``Q + uct_c * sqrt(ln N_parent / N_child)``, ties broken by
    ``random.Random(seed)``) to ``leaf_parallelism`` distinct unexpanded or terminal nodes
    (select.py).
expand + evaluate
    The action policy (policies.py) gives each leaf its children -- ``slm_width`` SLM samples,
    ``collab_width`` SLM+LLM fused samples, ``delegate_width`` steps the LLM writes alone -- all
    concurrently, so the executor batches the frontier, and the PRM scores them in one call: a
    step's reward is its node's value (no rollouts). Children are terminal when the executor says
    so (the step states an answer, or ``max_depth``); siblings with duplicate text are dropped.
backpropagate
    Each new child's reward is one visit to it and all its ancestors (running means, tree.py).
    Selecting a terminal node again backs its reward up once more (no executor call).

Budgets: the request's LLM quota (``max_llm_calls`` / ``max_llm_tokens`` / ``max_llm_faults``) is
read before each round; once it is spent only SLM children are written. After the simulations,
if no terminal node exists and ``finish_unterminated`` is set, the best open leaf is completed
greedily (``_finish``). The answer is the final choice over the terminal paths (final.py).
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from .actions import EXPANSION_LLM_ACTIONS, width
from .final import choose_final, terminals
from .gate import gated_step
from .policies import POLICIES
from .select import Pick, select_leaves
from .tree import Node, path_score

if TYPE_CHECKING:
    from .context import SearchContext

__all__ = ["run_gboost"]


async def run_gboost(ctx: SearchContext) -> Node | None:
    cfg = ctx.cfg
    root = await ctx.make_root()
    expand = POLICIES[cfg.action_policy]
    ctx.stats["solutions"] = 0   # simulations whose descent ended at a terminal (simulate_to_terminal)
    done = 0
    while done < cfg.num_simulations:
        ctx.stats["rounds"] += 1
        with ctx.cost.timed("select"):
            picks = select_leaves(ctx, root, min(cfg.leaf_parallelism, cfg.num_simulations - done))
        if not picks:  # nothing left to select: every path has ended
            ctx.stats["stop_reason"] = "tree_exhausted"
            break
        done += len(picks)
        ctx.stats["simulations"] += len(picks)
        picks = _revisit_terminals(ctx, picks)
        if not picks:
            if root.terminal:
                ctx.stats["stop_reason"] = "root_exhausted"
                break
            continue
        new = await expand(ctx, picks)
        _backpropagate(new, [leaf for leaf, _ in picks])
        if cfg.simulate_to_terminal:
            new += await _descend_to_terminals(ctx, expand, [leaf for leaf, _ in picks], new)
        if _reached_early_stop(ctx, new):
            ctx.stats["stop_reason"] = "early_stop"
            break
    if ctx.stats["stop_reason"] is None:
        ctx.stats["stop_reason"] = "simulations"
    if cfg.finish_unterminated:
        await _finish(ctx, root)
    with ctx.cost.timed("final"):
        return choose_final(ctx, root)


def _revisit_terminals(ctx: SearchContext, picks: list[Pick]) -> list[Pick]:
    """Back a picked terminal's reward up again; the picks left to expand."""
    for leaf, _ in picks:
        if leaf.terminal:
            ctx.stats["terminal_revisits"] += 1
            leaf.back_up()
    return [(leaf, arm) for leaf, arm in picks if not leaf.terminal]


def _backpropagate(new: list[Node], leaves: list[Node]) -> None:
    """New children in creation order; a leaf whose expansion produced nothing is a dead end."""
    for child in new:
        child.back_up()
    for leaf in leaves:
        if not leaf.children:
            leaf.exhausted = leaf.terminal = True
            if not leaf.is_root:
                leaf.back_up()


def _next_heads(ctx: SearchContext, leaves: list[Node], new: list[Node]) -> list[Node]:
    """The new child of each leaf a simulation descends to: the best by PRM reward (ties: the
    first). A leaf whose expansion wrote a terminal step ends its simulation with a solution; one
    whose expansion wrote nothing new (a dead end, or only duplicates) ends it without one."""
    heads = []
    for leaf in leaves:
        kids = [c for c in new if c.parent is leaf]
        if any(c.terminal for c in kids):
            ctx.stats["solutions"] += 1
        elif kids:
            heads.append(max(kids, key=lambda c: (c.step_reward, -c.id)))
    return heads


async def _descend_to_terminals(ctx: SearchContext, expand, leaves: list[Node], new: list[Node]) -> list[Node]:
    """Expand on the way down from each just-expanded leaf until a terminal, all in one batch per
    step (the policy's expansion each time: the siblings stay open for later simulations)."""
    live, written = _next_heads(ctx, leaves, new), []
    while live:
        new = await expand(ctx, [(n, None) for n in live])
        _backpropagate(new, live)
        written += new
        live = _next_heads(ctx, live, new)
    return written


def _reached_early_stop(ctx: SearchContext, new: list[Node]) -> bool:
    cfg = ctx.cfg
    return cfg.early_stop_reward is not None and any(
        c.terminal and ctx.has_answer(c) and path_score(c, cfg.prm_aggregation) >= cfg.early_stop_reward
        for c in new)


async def _finish(ctx: SearchContext, root: Node) -> None:
    """No terminal node yet: complete the best open leaf greedily, one step at a time.

    Each completion step writes one SLM child and -- for each LLM action with a width, while the
    LLM budget allows -- one child of it; the PRM picks the best (ties: the earlier). Under
    ``action_policy = "gate"`` it is the gated step (the LLM only where the SLM child scores below
    ``gate_threshold``), as in the search itself; otherwise all of them at once.
    """
    if next(terminals(root), None) is not None:
        return
    cfg = ctx.cfg
    leaves = [n for n in root.iter_nodes() if not n.is_root and n.is_leaf and not n.terminal and not n.pruned]
    if not leaves:
        return
    node = max(leaves, key=lambda n: (path_score(n, cfg.prm_aggregation), n.depth, -n.id))
    ctx.stats["finished_from"] = node.id
    asked = [a for a in EXPANSION_LLM_ACTIONS if width(cfg, a) > 0]
    with ctx.cost.timed("finish"):
        while not node.terminal:
            if cfg.action_policy == "gate":
                kids = await gated_step(ctx, [node], slm_n=1, threshold=cfg.gate_threshold,
                                        llm_asks=lambda quota: [(a, 1) for a in asked[:max(0, quota)]],
                                        replaces=cfg.gate_replaces)
            else:
                quota = ctx.llm_quota()
                kids = [c for cs in await ctx.expand([(node, "slm", 1)] + [(node, a, 1) for a in asked[:max(0, quota)]])
                        for c in cs]
                await ctx.score(kids)
            if not kids:
                node.exhausted = node.terminal = True
                break
            for c in kids:
                c.back_up()
            node = max(kids, key=lambda c: (c.step_reward, -c.id))
