"""Action ``slm``: every token of the step from the SLM alone."""
from __future__ import annotations

from .call import StepCall


async def slm_step(call: StepCall) -> None:
    """Append one step to ``call.seq``: forward, sample, until the step ends."""
    ex = call.ex
    while True:
        logits = await call.slm_forward()
        ex.engine.cache.append(call.seq, [call.sample(logits)])
        if call.ends():
            break
