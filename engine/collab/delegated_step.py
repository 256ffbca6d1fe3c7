"""Action ``delegate``: the general LLM writes the whole next step through a chat request.

This is what a chat-only API (no token-id prompts, no echo, no full distributions) can do for the
search. The question and the steps so far go in one chat request with a fixed instruction to write
only the next step; ``stop`` is the step delimiter and ``max_tokens`` is ``max_step_tokens`` (counted
in the LLM's tokens, which need not be the SLM's). The reply, tokenized by the SLM's tokenizer and
followed by the delimiter, is appended to the child's SLM sequence, so the tree goes on from it as
from any other step (the SLM computes those tokens in its next forward). An empty reply is a fault
(``LLMError("malformed")``): the executor redoes the step with the SLM, or fails, as configured.
Cost: one LLM call; ``llm_tokens`` are the prompt and completion tokens the API billed, charged even
when the reply is then refused, the prompt's as ``llm_context_tokens`` (a token budget bounds the
completion: ``max_tokens`` is the step's share of it).
"""
from __future__ import annotations

import torch

from .call import StepCall
from gboost.llm.base import LLMError
from gboost.cost import charge

DELEGATE_SYSTEM = (
    "You are solving a problem step by step together with another solver. You are given the problem "
    "and the steps written so far. Write only the next step: one step that moves the solution forward, "
    "without repeating earlier steps and without writing the steps after it. If it is the last step, "
    "end it with the final answer in \\boxed{}.")


def delegate_messages(question: str, steps: list[str], delimiter: str) -> list[dict]:
    """The chat request of a delegated step (the same for every API, so replies are comparable)."""
    done = delimiter.join(steps) if steps else "(none yet)"
    user = f"Problem:\n{question}\n\nSteps so far:\n{done}\n\nWrite the next step only."
    return [{"role": "system", "content": DELEGATE_SYSTEM}, {"role": "user", "content": user}]


async def delegated_step(call: StepCall) -> None:
    """Append the step the general LLM writes after the path ``call.seq`` continues."""
    ex, seq, gen, parent = call.ex, call.seq, call.gen, call.parent
    cfg = ex.cfg
    # the node's generator seeds the API's sampling: the same tree asks the same requests
    seed = int(torch.randint(0, 2**31 - 1, (1,), generator=gen, device=gen.device))
    reply = await ex.writer.write(delegate_messages(parent.question, parent.steps, cfg.step_delimiter),
                                  max_tokens=cfg.max_step_tokens if call.llm_tokens_left is None else
                                  min(cfg.max_step_tokens, call.llm_tokens_left),
                                  stop=[cfg.step_delimiter],
                                  temperature=call.temperature, top_p=cfg.top_p, seed=seed)
    charge(ex.cost, llm_tokens=reply.total_tokens, llm_context_tokens=reply.prompt_tokens)
    text = reply.text.split(cfg.step_delimiter)[0].strip()  # an API that ignores `stop` wrote on
    if not text:
        raise LLMError("malformed", f"the general LLM wrote an empty step (finish_reason={reply.finish_reason!r})")
    ids = ex.tok.encode_piece(text + cfg.step_delimiter)
    # cut where an SLM step would have to end: the SLM's position limit (collab/rules.py)
    room = ex.slm.model.max_positions - 1 - len(seq.token_ids)
    ex.engine.cache.append(seq, ids[:max(room, 1)])
