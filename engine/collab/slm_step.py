"""Action ``slm``: every token of the step from the SLM alone."""
from __future__ import annotations

import torch

from gboost.kv.cache import Sequence


async def slm_step(ex, seq: Sequence, gen: torch.Generator) -> None:
    """Append one step to ``seq``: forward, sample, until the step ends."""
    start = len(seq.token_ids)
    while True:
        logits = await ex.slm_forward(seq)
        ex.engine.cache.append(seq, [ex.sample(logits, gen)])
        if ex.ends(seq, start):
            break
