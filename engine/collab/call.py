"""StepCall: everything a step function gets, in one object (no maps on the side)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from gboost.kv.cache import Sequence

from .state import NodeState

__all__ = ["StepCall", "Fusion"]


@dataclass(frozen=True)
class Fusion:
    """How a fused step mixes the models: the LLM's weight, and whether the SLM's base model enters
    (proxy tuning). Action ``llm`` is weight 1 without the base: the LLM alone."""
    alpha: float
    proxy: bool = False


@dataclass
class StepCall:
    """One child's step being written onto ``seq``, a fork of ``parent.slm`` at length ``start``.
    ``ready``: the SLM's logits after the parent's last token, when scoring the parent computed them."""
    ex: Any               # the EngineExecutor (models, cache, LLM clients, this request's settings)
    parent: NodeState
    seq: Sequence
    gen: torch.Generator
    start: int
    ready: torch.Tensor | None = None
    #: this child's sampling temperature: the config's, or 0 for a greedy first child
    temperature: float = 0.0
    #: the LLM positions this step may still have computed (its share of max_llm_tokens; None: no cap)
    llm_tokens_left: int | None = None

    async def llm_rows(self, coro, n_rows: int):
        """The LLM's ``n_rows`` rows from ``coro`` (ex.llm.next_logprobs / score), counted against
        this step's share."""
        if self.llm_tokens_left is not None:
            self.llm_tokens_left -= n_rows
        return await self.ex.llm_rows(coro, n_rows)

    async def slm_forward(self) -> torch.Tensor:
        """The SLM's logits after ``seq``'s last token."""
        if self.ready is not None and len(self.seq.token_ids) == self.start:  # the parent's tokens still
            return self.ready
        return await self.ex.slm_forward(self.seq)

    def sample(self, logits: torch.Tensor) -> int:
        """One token from ``logits`` at this child's temperature (the ids both models have)."""
        return self.ex.sample(logits, self.gen, self.temperature)

    def ends(self) -> bool:
        """Does the step end with ``seq``'s last token? Also when its LLM share is spent."""
        return self.ex.ends(self.seq, self.start) or (self.llm_tokens_left is not None and self.llm_tokens_left < 1)
