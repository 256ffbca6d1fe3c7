"""Entry point of the search: ``await solve(question, executor, cfg, on_step)``.

Dispatches on ``cfg.method``:

=========  ==========================================================
gboost     MCTS over the actions' steps with PRM values (gboost.py)
slm        SLM alone, one chain of steps (baselines.py)
llm        general LLM alone, one chain of steps
fusion     SLM+LLM fused decoding (collab) at every step
bon        best-of-N SLM solutions ranked by aggregated PRM
beam       step-level beam search with the PRM
rsd        reward-guided speculative decoding (SLM, LLM regenerates low-PRM steps)
=========  ==========================================================

``on_step(step)`` (sync or async) receives ``{"index", "text", "action", "reward"}``
for every step of the answer: as each step is decided for the chain methods
(slm, llm, fusion, rsd), and in order once the search has chosen its path for
gboost, bon and beam.  Every executor state is released before ``solve``
returns or raises.

:class:`SearchContext` (context.py) is what one request's method decides with.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from gboost.cost import CostRecord, request_scope

from .answer import extract_answer
from .baselines import run_beam, run_bon, run_chain, run_rsd
from .config import SearchConfig
from .context import OnStep, SearchContext, settle
from .gboost import run_gboost
from .tree import Node, path_score

__all__ = ["solve", "SolveResult", "SearchContext", "settle"]


@dataclass
class SolveResult:
    answer: str | None                 #: extracted final answer (boxed / "answer is" / last number), raw
    steps: list[dict]                  #: chosen path: [{"text", "action", "reward"}]
    cost: CostRecord                   #: this request's cost (see engine/cost.py)
    root: Node                         #: the whole search tree (states already released)
    text: str = ""                     #: the chosen solution, steps joined by step_delimiter
    method: str = "gboost"
    score: float | None = None         #: aggregated PRM of the chosen path
    chosen: list[Node] = field(default_factory=list, repr=False)  #: chosen path nodes (root excluded)
    stats: dict[str, Any] = field(default_factory=dict)

    def to_dict(self, include_tree: bool = False) -> dict[str, Any]:
        d = {"answer": self.answer, "text": self.text, "method": self.method, "score": self.score,
             "steps": self.steps, "cost": self.cost.to_dict(), "stats": self.stats}
        if include_tree:
            from ..trace import to_json
            d["tree"] = to_json(self.root, self.chosen)
        return d


async def _run(ctx: SearchContext) -> Node | None:
    m = ctx.cfg.method
    if m == "gboost":
        return await run_gboost(ctx)
    if m == "slm":
        return await run_chain(ctx, "slm")
    if m == "llm":
        return await run_chain(ctx, "llm")
    if m == "fusion":
        return await run_chain(ctx, "collab")
    if m == "bon":
        return await run_bon(ctx)
    if m == "beam":
        return await run_beam(ctx)
    if m == "rsd":
        return await run_rsd(ctx)
    raise ValueError(f"unknown method {m!r}")  # config validation makes this unreachable


async def solve(question: str, executor: Any, cfg: SearchConfig | None = None,
                on_step: OnStep | None = None) -> SolveResult:
    """Solve one question with ``cfg.method``; every state is released before returning/raising."""
    cfg = cfg if cfg is not None else SearchConfig()
    if not isinstance(cfg, SearchConfig):
        raise TypeError(f"cfg must be a SearchConfig, got {type(cfg).__name__}")
    cfg.validate()  # it is a mutable dataclass: catch fields changed after construction
    if hasattr(executor, "with_config") and getattr(executor, "cfg", cfg) is not cfg:
        executor = executor.with_config(cfg)  # the executor generates with this request's settings
    ctx = SearchContext(executor, cfg, question, on_step)
    t0 = time.perf_counter()
    try:
        with request_scope(ctx.cost):  # the executor and the LLM client charge this request here
            end = await _run(ctx)
        chosen = end.path() if end is not None else []
        if not ctx.streamed:
            for node in chosen:
                await ctx.emit(node)
        text = cfg.step_delimiter.join(n.text for n in chosen)
        root = ctx.root if ctx.root is not None else Node.new_root()
        ctx.stats["nodes"] = root.size()
        formats = getattr(getattr(executor, "engine", None), "weight_formats", None)
        if formats:  # which weights the numbers came from (bf16, int8, int4), by model
            ctx.stats["weights"] = formats
        result = SolveResult(
            answer=extract_answer(text, "auto") if chosen else None,
            steps=[{"text": n.text, "action": n.action, "reward": n.reward} for n in chosen],
            cost=ctx.cost, root=root, text=text, method=cfg.method,
            score=path_score(end, cfg.prm_aggregation) if end is not None else None,
            chosen=chosen, stats=ctx.stats)
    except BaseException:
        ctx.release_all(raise_errors=False)
        raise
    ctx.release_all(raise_errors=True)
    ctx.cost.add_time("total", time.perf_counter() - t0)
    return result
