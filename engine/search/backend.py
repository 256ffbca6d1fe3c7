"""The protocol between the search policy and the models, plus a model-free reference backend.

The search (gboost.py, baselines.py) only ever talks to a :class:`StepBackend`.
The real implementation (SLM + general LLM + PRM sharing one paged KV pool) lives
in engine/search/actions.py & prm.py; :class:`ToyBackend` below is a deterministic
in-memory implementation used by the tests and handy for dry runs of the CLI.

Semantics every backend must honour
-----------------------------------
* ``root(question)`` returns an opaque *state* for the prompt (chat template
  applied, prompt prefilled or queued for prefill).
* ``expand(state, action, n)`` samples ``n`` children of ``state``: each child is
  ``state`` followed by one more reasoning step, i.e. text generated until the
  step delimiter (``"\\n\\n"``), EOS, or ``max_step_tokens``.  ``action`` is

  - ``"slm"``: the private SLM alone;
  - ``"collab"``: every token is sampled from the fusion of the SLM's and the
    LLM's next-token distributions (``fusion_rule`` / ``fusion_alpha``);
  - ``"llm"``: the general LLM alone (baselines ``llm`` and ``rsd``).

  Each returned child carries a *new* state (typically a forked KV sequence
  sharing the parent's blocks).  The parent state stays valid.
  Sampling settings (temperature, top_p, seed, fusion, step limits) come from
  the :class:`~engine.search.config.SearchConfig` the backend was built with
  (``cfg.sampling()``).
* ``score(states)`` returns, for every state, the PRM reward in ``[0, 1]`` of
  its newest step given everything before it.  The search sends all the
  children created in one round in a single call so the PRM runs batched.
* ``release(state)`` frees what the state holds.  The search calls it exactly
  once for every state it received (root and every child), when the request
  ends -- also on errors -- or earlier for children it discards.  It never
  uses a state after releasing it.
* Many requests (``solve`` calls) may run concurrently on one backend; the
  search issues its independent calls concurrently (``asyncio.gather``) so a
  backend scheduler can batch the whole frontier.
"""
from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

from .cost import CostRecord

__all__ = ["ACTIONS", "StepOut", "StepBackend", "check_step_out", "settle", "ToyBackend", "ToyState"]

#: The generation actions a backend must implement.
ACTIONS = ("slm", "collab", "llm")


@dataclass
class StepOut:
    """One sampled child step, as returned by :meth:`StepBackend.expand`."""

    text: str             #: the step text (without the trailing delimiter)
    token_ids: list[int]  #: generated token ids of the step
    state: Any            #: opaque child handle (holds the forked KV sequences)
    terminal: bool        #: ended at EOS or final-answer pattern, or depth cap
    action: str           #: "slm" | "collab" | "llm" -- the action that was requested
    fault: str | None = None  #: e.g. "llm_timeout": a collab/llm step fell back to the SLM


@runtime_checkable
class StepBackend(Protocol):
    """What the search needs from the models (see the module docstring)."""

    cost: CostRecord

    async def root(self, question: str) -> Any: ...

    async def expand(self, state: Any, action: str, n: int) -> list[StepOut]: ...

    async def score(self, states: list[Any]) -> list[float]: ...

    def release(self, state: Any) -> None: ...


async def settle(aws, on_orphan: Callable[[Any], None]) -> list:
    """``gather(*aws, return_exceptions=True)`` that loses nothing on cancellation.

    If the caller is cancelled while waiting, the pending awaitables are cancelled too, every one
    is waited for, each result that did arrive is handed to ``on_orphan`` (so states created by an
    ``expand`` that finished just in time are released, not leaked), and the cancellation goes on.
    A second cancellation during that wait (a server cancelling at shutdown what its handlers are
    already cancelling) does not cut it short: the results would be lost with their KV blocks.
    """
    tasks = [asyncio.ensure_future(a) for a in aws]
    try:
        return await asyncio.gather(*tasks, return_exceptions=True)
    except asyncio.CancelledError:
        for t in tasks:
            t.cancel()
        # test for done first: a caller cancelled on every loop turn (anyio re-delivers a cancelled
        # scope's cancellation) would otherwise never get past the await below
        while not all(t.done() for t in tasks):
            try:
                await asyncio.wait(tasks)
            except asyncio.CancelledError:
                pass  # already cancelling: keep waiting for the orphans, then re-raise below
        for t in tasks:
            if not t.cancelled() and t.exception() is None:
                on_orphan(t.result())
        raise


def check_step_out(out: Any, action: str) -> StepOut:
    """Validate one item returned by ``expand`` (clear error instead of a confusing crash later)."""
    if not isinstance(out, StepOut):
        raise TypeError(f"backend.expand must return StepOut objects, got {type(out).__name__}")
    if out.action not in ACTIONS:
        raise ValueError(f"backend returned unknown action {out.action!r}; expected one of {ACTIONS}")
    if out.action != action:
        raise ValueError(f"backend.expand(action={action!r}) returned a step labelled {out.action!r}")
    if not isinstance(out.text, str):
        raise TypeError(f"StepOut.text must be str, got {type(out.text).__name__}")
    return out


# --------------------------------------------------------------------------------------------
# Reference implementation without models
# --------------------------------------------------------------------------------------------

StepFn = Callable[[str, "tuple[str, ...]", str, int], "str | tuple[str, bool]"]
RewardFn = Callable[[str, "tuple[str, ...]"], float]
FaultFn = Callable[[str, "tuple[str, ...]", str, int], "str | None"]

_DEFAULT_ANSWER_RE = r"\\boxed\s*\{|[Tt]he (?:final )?answer is"


@dataclass
class ToyState:
    """State handle of :class:`ToyBackend`: the question and the step texts so far."""

    id: int
    question: str
    steps: tuple[str, ...] = ()
    actions: tuple[str, ...] = ()
    n_tokens: int = 0  # prompt + steps, for the fake prefix-cache accounting

    @property
    def depth(self) -> int:
        return len(self.steps)


def toy_tokens(text: str) -> list[int]:
    """Deterministic fake tokenizer: one id per whitespace-separated word."""
    return [zlib.crc32(w.encode()) % 50_000 for w in text.split()]


def _default_step(question: str, steps: tuple[str, ...], action: str, i: int) -> str:
    """Adds up the integers in the question in three steps; odd SLM samples slip by one."""
    nums = [int(x) for x in re.findall(r"-?\d+", question)]
    slip = action == "slm" and i % 2 == 1
    d = len(steps)
    if d == 0:
        return f"We need the sum of {', '.join(map(str, nums)) or 'nothing'}."
    if d == 1:
        return "Adding them up carefully." if not slip else "Adding them up (slip)."
    if slip or any("slip" in s for s in steps):
        return f"(slip) The answer is {sum(nums) + 1}."
    return f"The answer is {sum(nums)}."


def _default_reward(question: str, steps: tuple[str, ...]) -> float:
    return 0.2 if "slip" in steps[-1] else 0.8


class ToyBackend:
    """Deterministic model-free :class:`StepBackend`.

    ``step_fn(question, prior_step_texts, action, i)`` returns the text of the
    ``i``-th sampled child (or ``(text, terminal)``); ``reward_fn(question,
    step_texts)`` is the PRM (clipped to [0, 1]); ``fault_fn`` may return a fault
    kind for a collab/llm child, whose text is then produced with action
    ``"slm"`` (the fallback).  A step is terminal when ``step_fn`` says so, when
    it matches ``answer_pattern``, or at ``max_depth`` steps.

    For tests it keeps a strict ledger: ``live`` (unreleased states), raises on
    use-after-release and double release, logs every call in ``calls`` and
    records the peak number of concurrently running ``expand`` calls.
    """

    def __init__(
        self,
        step_fn: StepFn | None = None,
        reward_fn: RewardFn | None = None,
        *,
        fault_fn: FaultFn | None = None,
        max_depth: int = 8,
        answer_pattern: str = _DEFAULT_ANSWER_RE,
        latency_s: float = 0.0,
    ) -> None:
        self.step_fn = step_fn or _default_step
        self.reward_fn = reward_fn or _default_reward
        self.fault_fn = fault_fn
        self.max_depth = max_depth
        self.answer_re = re.compile(answer_pattern)
        self.latency_s = latency_s
        self.cost = CostRecord()
        self.live: dict[int, ToyState] = {}
        self.n_created = 0
        self.n_released = 0
        self.calls: list[tuple] = []
        self.inflight = 0
        self.max_inflight = 0
        self._next_id = 0

    # ---------------------------------------------------------------- helpers
    def _new_state(self, question: str, steps: tuple[str, ...], actions: tuple[str, ...], n_tokens: int) -> ToyState:
        st = ToyState(self._next_id, question, steps, actions, n_tokens)
        self._next_id += 1
        self.n_created += 1
        self.live[st.id] = st
        return st

    def _check_live(self, state: Any) -> ToyState:
        if not isinstance(state, ToyState):
            raise TypeError(f"not a ToyState: {state!r}")
        if state.id not in self.live:
            raise RuntimeError(f"state {state.id} used after release (or unknown)")
        return state

    # --------------------------------------------------------------- protocol
    async def root(self, question: str) -> ToyState:
        self.calls.append(("root", question))
        await asyncio.sleep(0)
        return self._new_state(question, (), (), len(toy_tokens(question)))

    async def expand(self, state: Any, action: str, n: int) -> list[StepOut]:
        st = self._check_live(state)
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        self.calls.append(("expand", st.id, action, n, st.steps))
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        try:
            await asyncio.sleep(self.latency_s)
        finally:
            self.inflight -= 1
        self._check_live(st)
        outs: list[StepOut] = []
        for i in range(n):
            fault = self.fault_fn(st.question, st.steps, action, i) if (self.fault_fn and action != "slm") else None
            gen_action = "slm" if fault else action
            res = self.step_fn(st.question, st.steps, gen_action, i)
            text, term = (res if isinstance(res, tuple) else (res, False))
            toks = toy_tokens(text)
            terminal = bool(term) or bool(self.answer_re.search(text)) or st.depth + 1 >= self.max_depth
            child = self._new_state(st.question, st.steps + (text,), st.actions + (action,), st.n_tokens + len(toks))
            # backend-level accounting (what a real engine would have computed)
            self.cost.prefix_cache_tokens += st.n_tokens
            if action == "llm" and not fault:
                self.cost.llm_tokens += len(toks)
            elif action == "collab" and not fault:
                self.cost.llm_tokens += len(toks)
                self.cost.slm_tokens += len(toks)
            else:
                self.cost.slm_tokens += len(toks)
            if action != "slm":
                self.cost.llm_calls += 1
            if fault:
                self.cost.add_fault(fault)
            outs.append(StepOut(text, toks, child, terminal, action, fault))
        return outs

    async def score(self, states: list[Any]) -> list[float]:
        sts = [self._check_live(s) for s in states]
        self.calls.append(("score", len(sts), tuple(s.steps for s in sts)))
        await asyncio.sleep(0)
        out = []
        for st in sts:
            if not st.steps:
                raise ValueError("score() on a root state (no step to score)")
            self.cost.prm_tokens += len(toy_tokens(st.steps[-1]))
            out.append(min(1.0, max(0.0, float(self.reward_fn(st.question, st.steps)))))
        return out

    def release(self, state: Any) -> None:
        if not isinstance(state, ToyState):
            raise TypeError(f"not a ToyState: {state!r}")
        if self.live.pop(state.id, None) is None:
            raise RuntimeError(f"state {state.id} released twice (or unknown)")
        self.n_released += 1

    # ------------------------------------------------------------------ tests
    def expand_calls(self, action: str | None = None) -> list[tuple]:
        return [c for c in self.calls if c[0] == "expand" and (action is None or c[2] == action)]

    def score_calls(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "score"]
