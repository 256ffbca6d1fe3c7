"""The gated step: the SLM writes, the PRM scores, and the LLM is asked only where the SLM is weak.

One rule for the three places that use it: the ``gate`` action policy, the rsd baseline and the
greedy completion after the simulations. Where no SLM child of a leaf scores ``threshold`` (or
the SLM wrote none), the LLM children ``llm_asks(quota)`` are written and scored; with
``replaces`` they replace the weak SLM children (pruned, their KV released at once) instead of
joining them. A faulted LLM child was written by the SLM as a fallback: it replaces nothing.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from .tree import Node

if TYPE_CHECKING:
    from .context import SearchContext

__all__ = ["gated_step", "gate_opens"]

LLMAsks = Callable[[int], "list[tuple[str, int]]"]  # LLM quota -> [(action, children)]


def gate_opens(threshold: float, slm_kids: list[Node]) -> bool:
    """The LLM is asked where no SLM child scores ``threshold`` (or there is none)."""
    return max((c.step_reward for c in slm_kids), default=-1.0) < threshold


async def gated_step(ctx: SearchContext, leaves: list[Node], *, slm_n: int, threshold: float,
                     llm_asks: LLMAsks, replaces: bool, dedup: bool | None = None) -> list[Node]:
    """The leaves' new children that stand, scored: SLM children first, then the LLM's."""
    slm_kids = (await ctx.expand([(leaf, "slm", slm_n) for leaf in leaves], dedup=dedup) if slm_n > 0
                else [[] for _ in leaves])
    first = [c for kids in slm_kids for c in kids]
    await ctx.score(first)
    quota = ctx.llm_quota()
    reqs: list[tuple[Node, str, int]] = []
    for leaf, kids in zip(leaves, slm_kids):
        if gate_opens(threshold, kids):
            asks = [(a, n) for a, n in llm_asks(quota) if n > 0]
            quota -= sum(n for _, n in asks)
            if not asks and not kids:  # nothing written and no LLM left: the SLM once more
                asks = [("slm", 1)]
            reqs.extend((leaf, a, n) for a, n in asks)
    second = [c for kids in await ctx.expand(reqs, dedup=dedup) for c in kids] if reqs else []
    await ctx.score(second)
    if replaces:
        helped = {id(c.parent) for c in second if c.action != "slm" and not c.fault}
        for c in first:
            if id(c.parent) in helped:
                ctx.prune(c)
        first = [c for c in first if not c.pruned]
    return first + second
