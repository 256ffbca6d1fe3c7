"""Action policies: how a G-Boost round expands its leaves and scores the new children.

Each policy is a small plan over the table of actions (actions.py), returning the round's new
children, scored, in creation order:

both   every leaf gets its SLM children and its LLM children at once, in one batch
gate   the gated step (gate.py): LLM children only where the SLM children score low
arms   each leaf expands the one arm its selection picked

A new policy is one function here and its name in ``POLICIES`` (config.ACTION_POLICIES is its list).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Callable

from .gate import gated_step
from .select import Pick, arm_width, llm_widths
from .tree import Node

if TYPE_CHECKING:
    from .context import SearchContext

__all__ = ["POLICIES"]


async def _expand_scored(ctx: SearchContext, reqs: list[tuple[Node, str, int]]) -> list[Node]:
    new = [c for kids in await ctx.expand(reqs) for c in kids]
    await ctx.score(new)
    return new


async def expand_both(ctx: SearchContext, picks: list[Pick]) -> list[Node]:
    cfg, quota = ctx.cfg, ctx.llm_quota()
    reqs = []
    for leaf, _ in picks:
        llm = llm_widths(cfg, quota)
        quota -= sum(n for _, n in llm)
        n_slm = cfg.slm_width if (cfg.slm_width > 0 or any(n for _, n in llm)) else 1
        reqs += [(leaf, "slm", n_slm)] + [(leaf, a, n) for a, n in llm]
    return await _expand_scored(ctx, reqs)


async def expand_gate(ctx: SearchContext, picks: list[Pick]) -> list[Node]:
    cfg = ctx.cfg
    return await gated_step(ctx, [leaf for leaf, _ in picks], slm_n=cfg.slm_width, threshold=cfg.gate_threshold,
                            llm_asks=lambda quota: llm_widths(cfg, quota), replaces=cfg.gate_replaces)


async def expand_arms(ctx: SearchContext, picks: list[Pick]) -> list[Node]:
    cfg, quota = ctx.cfg, ctx.llm_quota()
    reqs = []
    for leaf, arm in picks:
        arm = arm or "slm"
        if arm != "slm":
            n = arm_width(cfg, arm, quota)
            quota -= n
            if n == 0:  # quota vanished since selection: fall back to the SLM
                arm, n = "slm", max(1, cfg.slm_width)
        else:
            n = arm_width(cfg, "slm", quota) or 1
        reqs.append((leaf, arm, n))
    return await _expand_scored(ctx, reqs)


POLICIES: dict[str, Callable[[SearchContext, list[Pick]], Awaitable[list[Node]]]] = {
    "both": expand_both, "gate": expand_gate, "arms": expand_arms}
