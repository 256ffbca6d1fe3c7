"""The engine's StepExecutor: steps and scores on the shared KV pool, for the search to await.

A state (state.py) holds the node's SLM and PRM sequences, each forked from its parent's. A
child is: fork the SLM sequence, run the action's step function (STEPS) on a StepCall (call.py),
and on an LLM failure throw the partial step away and write it with the SLM instead (fault
counted) unless configured to fail. Steps are scored by the PRM. A new action is one step
function ``async def step(call)`` in STEPS and one record in the table of actions
(engine/search/actions.py).
"""
from __future__ import annotations

import asyncio
import copy
import re
from dataclasses import dataclass

import torch

from gboost.kv.cache import Sequence
from gboost.llm.base import LLMError
from gboost.positions import check_fits
from gboost.sampling import sample_token
from gboost.search.actions import cannot_run, runs_as
from gboost.search.config import ConfigError, SearchConfig, check_stack_runs
from gboost.cost import CostRecord, charge, charge_fault
from gboost.search.context import settle
from gboost.search.protocol import StepOut

from .call import StepCall
from .delegated_step import delegated_step
from .fused_step import collab_step, llm_step
from .rules import child_temperature, node_seed, slm_prompt_ids, step_ends, step_terminal, step_text
from .slm_step import slm_step
from .state import NodeState

#: action name -> the function that writes one step of it onto a forked SLM sequence
STEPS = {"slm": slm_step, "collab": collab_step, "llm": llm_step, "delegate": delegated_step}


@dataclass
class CollabOptions:
    collab_mode: str = "speculative"   # speculative | exact
    max_draft: int = 16                # SLM tokens drafted per speculative round (at most, if adaptive)
    draft_policy: str = "fixed"        # fixed: max_draft every round | adaptive: see fused_step.next_draft
    on_llm_fault: str = "fallback"     # fallback (SLM step, fault counted) | fail
    topk_support: int = 20             # SLM top-k entering the support when LLM rows are top-k only

    def __post_init__(self):
        if self.collab_mode not in ("speculative", "exact"):
            raise ValueError(f"collab_mode must be speculative or exact, got {self.collab_mode!r}")
        if self.on_llm_fault not in ("fallback", "fail"):
            raise ValueError(f"on_llm_fault must be fallback or fail, got {self.on_llm_fault!r}")
        if self.max_draft < 1:
            raise ValueError("max_draft must be >= 1")
        if self.draft_policy not in ("fixed", "adaptive"):
            raise ValueError(f"draft_policy must be fixed or adaptive, got {self.draft_policy!r}")


@dataclass
class StepCounts:
    """The executor's counters; every per-request view (with_config) holds the same object."""
    live_states: int = 0     # states handed out and not yet released
    llm_rounds: int = 0      # LLM calls made by collaborative steps
    draft_proposed: int = 0  # speculative: drafted tokens
    draft_accepted: int = 0  # speculative: drafted tokens accepted


class EngineExecutor:
    def __init__(self, engine, scheduler, cfg: SearchConfig, *, llm=None, prm=None, base=None,
                 writer=None, options: CollabOptions | None = None):
        """``llm``: a general LLM giving next-token rows (fused steps); ``writer``: one answering
        chat requests (gboost.llm.chat.ChatLLM: delegated steps). A chat-only endpoint is a writer
        and no ``llm``; the ``llm`` action is then a delegated step."""
        self.engine, self.scheduler, self.cfg = engine, scheduler, cfg
        self.llm, self.prm, self.base, self.writer = llm, prm, base, writer
        self.opt = options or CollabOptions()
        self.slm = engine.role("slm")
        self.tok = self.slm.tokenizer
        self.eos = set(self.slm.eos_token_ids)
        self.answer_re = re.compile(cfg.answer_pattern)
        self.cost = CostRecord()            # running total; each request's own record is charged too
        if prm is not None:
            prm.cost = self.cost
        for lm in (llm, base):
            if lm is not None and lm.charges_itself:
                lm.cost = self.cost         # a local LLM (or base) charges what it computes itself
        self.counts = StepCounts()

    def check_config(self, cfg: SearchConfig) -> None:
        """Raise ConfigError if this executor cannot run ``cfg`` (before any state exists)."""
        check_stack_runs(cfg, has_llm=self.llm is not None, has_base=self.base is not None,
                         has_writer=self.writer is not None)

    def with_adapter(self, name: str) -> "EngineExecutor":
        """This executor with its SLM running the LoRA adapter ``name`` (one installed on the SLM's
        model, Engine.add_adapter): a request's own private SLM on the shared base. KeyError if none."""
        view = copy.copy(self)
        view.slm = self.engine.role("slm", adapter=name)
        if getattr(self.prm, "reads_slm", False):  # a head on the SLM's own rows must know these rows
            self.prm.check_rows(view.slm)
        return view

    def with_config(self, cfg: SearchConfig) -> "EngineExecutor":
        """This executor generating with one request's ``cfg`` (sampling, fusion, step rules);
        models, KV cache, LLM, PRM, cost and counters stay shared with ``self``."""
        self.check_config(cfg)
        view = copy.copy(self)
        view.cfg, view.answer_re = cfg, re.compile(cfg.answer_pattern)
        return view

    # -- protocol ----------------------------------------------------------------------
    async def root(self, question: str) -> NodeState:
        # tokenized off the event loop (a question may be megabytes), and both prompts checked
        # before any sequence exists: a new sequence takes references on cached prefix blocks, so
        # one made and then refused would pin them (and its token list) for good
        ids, prm_ids = await asyncio.to_thread(self._root_ids, question)
        check_fits(len(ids), self.slm.model.max_positions, self.slm.key, "the question with its prompt template")
        if prm_ids is not None:
            m = self.prm.model
            check_fits(len(prm_ids), m.model.max_positions, m.key, "the PRM's prompt for the question")
        cache = self.engine.cache
        slm = self.slm.new_sequence(cache, ids)
        try:
            prm = None if prm_ids is None else self.prm.model.new_sequence(cache, prm_ids)
        except BaseException:
            cache.free(slm)
            raise
        charge(self.cost, prefix_cache_tokens=slm.cached_tokens + (prm.cached_tokens if prm else 0))
        self.counts.live_states += 1
        return NodeState(slm, prm, 0, (), question=question)

    def _root_ids(self, question: str) -> tuple[list[int], list[int] | None]:
        return slm_prompt_ids(self.tok, question), None if self.prm is None else self.prm.root_ids(question)

    async def expand(self, state: NodeState, action: str, n: int, first: int = 0,
                     max_llm_tokens: int | None = None) -> list[StepOut]:
        if action not in STEPS:
            raise ValueError(f"unknown action {action!r}")
        self._step(action)  # refuses an action this stack cannot run before any child exists
        res = await settle([self._child(state, action, i, max_llm_tokens) for i in range(first, first + n)],
                           on_orphan=lambda out: self.release(out.state))
        errors = [r for r in res if isinstance(r, BaseException)]
        if errors:  # the search never sees these children: release the ones that did finish
            for r in res:
                if isinstance(r, StepOut):
                    self.release(r.state)
            raise errors[0]
        return res

    async def score(self, states: list[NodeState]) -> list[float]:
        if self.prm is None:
            raise ValueError("no PRM configured")
        with self.cost.timed("score"):
            if getattr(self.prm, "reads_slm", False):  # a value head on the SLM's own rows
                return await self.prm.score_slm(states)
            return await self.prm.score([s.prm for s in states])

    def release(self, state: NodeState) -> None:
        self.engine.cache.free(state.slm)
        if state.prm is not None:
            self.engine.cache.free(state.prm)
        self.counts.live_states -= 1
        if self.counts.live_states == 0:  # idle engine: give the LLM's (and base's) session blocks back
            for lm in (self.llm, self.base):
                if lm is not None and lm.charges_itself:
                    lm.release_sessions()

    def _step(self, action: str):
        """The step function of ``action`` on this stack: its own, or its stand-in's (actions.py)."""
        caps = dict(has_rows=self.llm is not None, has_chat=self.writer is not None)
        name = runs_as(action, **caps)
        if name is None:
            raise ValueError(cannot_run(action, **caps))
        return STEPS[name]

    # -- one child ------------------------------------------------------------------------
    def _generator(self, key: tuple) -> torch.Generator:
        g = torch.Generator(device=self.engine.cache.pool.device)
        g.manual_seed(node_seed(self.cfg.seed, key))
        return g

    async def _child(self, parent: NodeState, action: str, i: int, max_llm_tokens: int | None) -> StepOut:
        cache = self.engine.cache
        key = parent.key + ((action, i),)
        seq = cache.fork(parent.slm)
        start = len(seq.token_ids)
        fault = prm = None
        try:
            call = StepCall(self, parent, seq, self._generator(key), start, parent.ready,
                            temperature=child_temperature(self.cfg, i), llm_tokens_left=max_llm_tokens)
            with self.cost.timed(f"expand_{action}"):
                try:
                    await self._step(action)(call)
                except LLMError as e:
                    if self.opt.on_llm_fault == "fail":
                        raise
                    fault = f"llm_{e.kind}"
                    charge_fault(self.cost, fault)
                    cache.truncate(seq, start)  # throw the partial step away: redo it with the SLM
                    call.gen, call.llm_tokens_left = self._generator(key + ("fallback",)), None
                    await slm_step(call)
            toks = seq.token_ids[start:]
            text = step_text(self.tok, toks, self.cfg, self.eos)
            if parent.prm is not None:
                prm = cache.fork(parent.prm)
                cache.append(prm, self.prm.step_ids(text, first=parent.depth == 0))
        except BaseException:
            cache.free(seq)
            if prm is not None:
                cache.free(prm)
            raise
        depth = parent.depth + 1
        terminal = step_terminal(text, toks, depth, len(seq.token_ids), self.cfg, self.eos,
                                 self.slm.model.max_positions, self.answer_re)
        self.counts.live_states += 1
        if action != "slm":
            charge(self.cost, llm_calls=1)  # a fault too: a failing endpoint uses up the budget
        state = NodeState(seq, prm, depth, key, parent.steps + [text], step_tokens=len(toks),
                          question=parent.question)
        return StepOut(text, toks, state, terminal, action, fault)

    # -- what step functions call ---------------------------------------------------------
    def ends(self, seq: Sequence, start: int) -> bool:
        """Does the step that began at `start` end with the last token of seq?"""
        return step_ends(self.tok, seq.token_ids[start:], len(seq.token_ids), self.cfg, self.eos,
                         self.slm.model.max_positions)

    @property
    def shared_width(self) -> int:
        """Ids the SLM and the general LLM both have rows for. Their logit widths may differ by
        padding (one tokenizer); a sampled id past the narrower one would index past its embedding."""
        llm_width = getattr(self.llm, "vocab_size", None)
        return min(self.slm.config.vocab_size, llm_width or self.slm.config.vocab_size)

    def sample(self, logits: torch.Tensor, gen: torch.Generator, temperature: float) -> int:
        return sample_token(logits[..., :self.shared_width], temperature, self.cfg.top_p, gen)

    async def slm_forward(self, seq: Sequence):
        """The SLM's logits after ``seq``'s last token (StepCall.slm_forward takes the parent's ready ones)."""
        logits = await self.scheduler.forward(seq)
        # what the forward computed: preemption or a late prefix-cache match may have changed it
        charge(self.cost, slm_tokens=seq.last_computed, prefix_cache_tokens=seq.last_hit)
        return logits

    async def base_rows(self, ids: list[int], n_rows: int, proxy: bool):
        if not proxy:
            return None
        if self.base is None:
            raise ConfigError("fusion_rule='proxy' needs the SLM's base model")
        cut = len(ids) - n_rows + 1  # rows after ids[cut-1] and after each later token
        return await self.base.score(ids[:cut], ids[cut:])

    async def llm_rows(self, coro, n_tokens: int):
        self.counts.llm_rounds += 1
        if not self.llm.charges_itself:  # an endpoint: charge the positions it scored
            charge(self.cost, llm_tokens=n_tokens)
        return await coro
