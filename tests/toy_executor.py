"""A scripted, model-free StepExecutor for the search's tests: deterministic steps and rewards,
a strict ledger of the states it hands out, and work charged by the conventions of count_step."""
from __future__ import annotations

import asyncio
import re
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from gboost.cost import CostRecord, charge, charge_fault
from gboost.search.protocol import ACTIONS, StepOut

def count_step(cost: CostRecord, action: str, n_tokens: int, fault: str | None) -> None:
    """What a generated step of ``n_tokens`` costs, by action:

    =========  ===============  ===============
    action     slm_tokens       llm_tokens
    =========  ===============  ===============
    slm        k                0
    collab     k                k   (every fused token needs both models)
    llm        0                k
    delegate   0                k
    =========  ===============  ===============

    A collab/llm/delegate step that reports a ``fault`` (the SLM wrote it) is SLM tokens, still one LLM
    call, and one ``llm_faults[fault]``.
    """
    if action == "slm":
        cost.slm_tokens += n_tokens
        return
    if action not in ("collab", "llm", "delegate"):
        raise ValueError(f"unknown action {action!r}")
    cost.llm_calls += 1
    if fault is not None:
        cost.add_fault(fault)
        cost.slm_tokens += n_tokens
        return
    if action == "collab":
        cost.slm_tokens += n_tokens
    cost.llm_tokens += n_tokens


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


class ToyExecutor:
    """Deterministic model-free :class:`~gboost.search.protocol.StepExecutor`.

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

    async def expand(self, state: Any, action: str, n: int, first: int = 0,
                     max_llm_tokens: int | None = None) -> list[StepOut]:
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
        for i in range(first, first + n):
            fault = self.fault_fn(st.question, st.steps, action, i) if (self.fault_fn and action != "slm") else None
            gen_action = "slm" if fault else action
            res = self.step_fn(st.question, st.steps, gen_action, i)
            text, term = (res if isinstance(res, tuple) else (res, False))
            if max_llm_tokens is not None and not fault:  # the step ends at its share, as the engine's does
                text = " ".join(text.split()[:max_llm_tokens])
            toks = toy_tokens(text)
            terminal = bool(term) or bool(self.answer_re.search(text)) or st.depth + 1 >= self.max_depth
            child = self._new_state(st.question, st.steps + (text,), st.actions + (action,), st.n_tokens + len(toks))
            # charged to the request and to our total, as the engine's executor charges its work
            d = CostRecord(prefix_cache_tokens=st.n_tokens)
            count_step(d, action, len(toks), fault)
            if action != "slm" and not fault:
                d.llm_context_tokens = self.llm_prefill_tokens(st, toks) - len(toks)
                d.llm_tokens += d.llm_context_tokens
            charge(self.cost, slm_tokens=d.slm_tokens, llm_tokens=d.llm_tokens, llm_calls=d.llm_calls,
                   prefix_cache_tokens=d.prefix_cache_tokens, llm_context_tokens=d.llm_context_tokens)
            if fault:
                charge_fault(self.cost, fault)
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
            charge(self.cost, prm_tokens=len(toy_tokens(st.steps[-1])))
            out.append(min(1.0, max(0.0, float(self.reward_fn(st.question, st.steps)))))
        return out

    def release(self, state: Any) -> None:
        if not isinstance(state, ToyState):
            raise TypeError(f"not a ToyState: {state!r}")
        if self.live.pop(state.id, None) is None:
            raise RuntimeError(f"state {state.id} released twice (or unknown)")
        self.n_released += 1

    def llm_prefill_tokens(self, parent: ToyState, toks: list[int]) -> int:
        """LLM tokens an LLM-involving step computes: its own tokens here (a double may add context)."""
        return len(toks)

    # ------------------------------------------------------------------ tests
    def expand_calls(self, action: str | None = None) -> list[tuple]:
        return [c for c in self.calls if c[0] == "expand" and (action is None or c[2] == action)]

    def score_calls(self) -> list[tuple]:
        return [c for c in self.calls if c[0] == "score"]
