"""The one protocol between the search policy and whatever executes steps.

The search (gboost.py, baselines.py) only ever talks to a :class:`StepExecutor`. The real
one (SLM + general LLM + PRM on one paged KV pool) is engine/collab/executor.py; the tests
drive the search with a scripted, model-free one (tests/toy_executor.py).

Semantics every executor must honour
------------------------------------
* ``root(question)`` returns an opaque *state* for the prompt (chat template
  applied, prompt prefilled or queued for prefill).
* ``expand(state, action, n, first=0)`` samples ``n`` children of ``state`` -- its
  samples ``first .. first+n-1`` of ``action``, each seeded by its own index, so a node
  expanded again gets new samples, not the same ones: each child is
  ``state`` followed by one more reasoning step, i.e. text generated until the
  step delimiter (``"\\n\\n"``), EOS, or ``max_step_tokens``.  ``action`` is

  - ``"slm"``: the private SLM alone;
  - ``"collab"``: every token is sampled from the fusion of the SLM's and the
    LLM's next-token distributions (``fusion_rule`` / ``fusion_alpha``);
  - ``"llm"``: the general LLM alone (baselines ``llm`` and ``rsd``);
  - ``"delegate"``: the general LLM writes the whole step through a chat request
    (what a chat-only API can do; an executor whose LLM is chat-only writes ``"llm"``
    steps this way too).

  Each returned child carries a *new* state (typically a forked KV sequence
  sharing the parent's blocks).  The parent state stays valid.
  Under a request's ``max_llm_tokens`` an LLM-involving expansion also gets
  ``max_llm_tokens=share``: each child's LLM generates at most ``share`` tokens (the step
  ends there), which is how the budget holds exactly. Without a budget it is not passed.
  Sampling settings (temperature, top_p, seed, fusion, step limits) come from
  the :class:`~gboost.search.config.SearchConfig` the executor was built with
  (or handed through ``with_config``).
* ``score(states)`` returns, for every state, the PRM reward in ``[0, 1]`` of
  its newest step given everything before it.  The search sends all the
  children created in one round in a single call so the PRM runs batched.
* ``release(state)`` frees what the state holds.  The search calls it exactly
  once for every state it received (root and every child), when the request
  ends -- also on errors -- or earlier for children it discards.  It never
  uses a state after releasing it.
* Many requests (``solve`` calls) may run concurrently on one executor; the
  search issues its independent calls concurrently (``asyncio.gather``) so the
  executor's scheduler can batch the whole frontier.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from .config import ACTIONS

__all__ = ["ACTIONS", "StepOut", "StepExecutor", "check_step_out"]


@dataclass
class StepOut:
    """One sampled child step, as returned by :meth:`StepExecutor.expand`."""

    text: str             #: the step text (without the trailing delimiter)
    token_ids: list[int]  #: generated token ids of the step
    state: Any            #: opaque child handle (holds the forked KV sequences)
    terminal: bool        #: ended at EOS or final-answer pattern, or depth cap
    action: str           #: "slm" | "collab" | "llm" | "delegate" -- the action that was requested
    fault: str | None = None  #: e.g. "llm_timeout": an LLM step fell back to the SLM


@runtime_checkable
class StepExecutor(Protocol):
    """What the search needs from the models (see the module docstring). An executor charges
    the work it does to the request being served (engine/cost.py), which budgets read."""

    async def root(self, question: str) -> Any: ...

    async def expand(self, state: Any, action: str, n: int, first: int = 0) -> list[StepOut]: ...

    async def score(self, states: list[Any]) -> list[float]: ...

    def release(self, state: Any) -> None: ...


def check_step_out(out: Any, action: str) -> StepOut:
    """Validate one item returned by ``expand`` (clear error instead of a confusing crash later)."""
    if not isinstance(out, StepOut):
        raise TypeError(f"executor.expand must return StepOut objects, got {type(out).__name__}")
    if out.action not in ACTIONS:
        raise ValueError(f"executor returned unknown action {out.action!r}; expected one of {ACTIONS}")
    if out.action != action:
        raise ValueError(f"executor.expand(action={action!r}) returned a step labelled {out.action!r}")
    if not isinstance(out.text, str):
        raise TypeError(f"StepOut.text must be str, got {type(out.text).__name__}")
    return out
