"""The real StepBackend: SLM steps and collaborative steps on the shared KV pool.

A state holds the node's SLM and PRM sequences, each forked from its parent's, so a path's
prefix is computed once per model. Actions:
  slm     every token from the SLM alone;
  collab  every token from the fusion of SLM and LLM distributions, either token by token
          ("exact") or "speculative": the SLM drafts the rest of the step, the LLM scores the
          draft in one call, the verification kernel keeps the longest prefix consistent with
          the fused distribution and resamples at the first rejection (same distribution);
  llm     the LLM alone (log-linear fusion weight 1), through the same machinery.
fusion_rule "proxy" (proxy tuning) fuses llm + alpha * (slm - base) with the SLM's untuned base
model, resident like a local LLM (its rows come from the same kind of session, in lockstep).
A failing LLM turns a collab/llm step into an SLM step (fault counted) unless configured to fail.
"""
from __future__ import annotations

import asyncio
import copy
import re
import zlib
from dataclasses import dataclass, field

import torch

from engine.kv.cache import Sequence
from engine.llm.base import LLMError, TokenLogprobs
from engine.llm.topk import union_support
from engine.runner import PromptTooLong
from engine.sampling import processed_probs
from engine.search.backend import StepOut, settle
from engine.search.config import ConfigError, SearchConfig
from engine.search.cost import CostRecord, charge
from kernels.fused_sampling import fuse_logprobs, fused_sample, make_noise, sample, sample_kept

SLM_SYSTEM = "Please reason step by step, separating steps with a blank line, and put your final answer within \\boxed{}."


@dataclass
class NodeState:
    slm: Sequence
    prm: Sequence
    depth: int
    key: tuple               # path of (action, index) from the root: seeds the node's sampling
    steps: list[str] = field(default_factory=list)
    step_tokens: int = 0     # tokens of the newest step
    # SLM logits after the last token, once a value head's score computed that token: the
    # children's first draw reads them instead of computing the token again
    ready: torch.Tensor | None = None


@dataclass
class BackendOptions:
    collab_mode: str = "speculative"   # speculative | exact
    max_draft: int = 16                # SLM tokens drafted per speculative round
    on_llm_fault: str = "fallback"     # fallback (SLM step, fault counted) | fail
    topk_support: int = 20             # SLM top-k entering the support when LLM rows are top-k only

    def __post_init__(self):
        if self.collab_mode not in ("speculative", "exact"):
            raise ValueError(f"collab_mode must be speculative or exact, got {self.collab_mode!r}")
        if self.on_llm_fault not in ("fallback", "fail"):
            raise ValueError(f"on_llm_fault must be fallback or fail, got {self.on_llm_fault!r}")
        if self.max_draft < 1:
            raise ValueError("max_draft must be >= 1")


async def gather_all(*aws):
    """Like asyncio.gather, but waits for every awaitable before raising: a failed LLM call must
    not leave an SLM forward of the same sequence in flight while the step is rolled back."""
    res = await asyncio.gather(*aws, return_exceptions=True)
    for r in res:
        if isinstance(r, BaseException):
            raise r
    return res


def check_stack_runs(cfg: SearchConfig, *, has_llm: bool, has_base: bool) -> None:
    """Raise ConfigError if a stack with (or without) a general LLM and a base model cannot run
    ``cfg`` -- callable before any model is loaded."""
    needs_llm = cfg.method in ("llm", "fusion", "rsd") or (cfg.method == "gboost" and cfg.collab_width > 0)
    if needs_llm and not has_llm:
        what = f"method={cfg.method}" + (" with collab_width > 0" if cfg.method == "gboost" else "")
        raise ConfigError(f"{what} needs a general LLM, and this stack has none")
    if cfg.fusion_rule == "proxy" and cfg.fuses() and not has_base:
        raise ConfigError("fusion_rule='proxy' needs the SLM's base model, which this stack does not "
                          "load (pass --base / base=...); or use 'loglinear'")


def _check_fits(m, ids: list[int], what: str) -> None:
    """PromptTooLong (a 400 on the server) if ``ids`` exceed resident model ``m``'s positions."""
    if len(ids) > m.model.max_positions:
        raise PromptTooLong(f"{what} is {len(ids)} tokens with its prompt template, more than the "
                            f"{m.model.max_positions} positions of model {m.key!r}")


def slm_prompt_ids(tok, question: str) -> list[int]:
    """The SLM's prompt for a question (the value head's `text` layout starts the same way)."""
    msgs = [{"role": "system", "content": SLM_SYSTEM}, {"role": "user", "content": question}]
    return tok.encode_chat(msgs) if tok.chat_template else tok.encode_prompt(question + "\n\n")


def node_seed(seed: int, key: tuple) -> int:
    """Seed of the sampling noise of the node at ``key`` (its path of (action, index) from the root)."""
    return zlib.crc32(repr((seed,) + key).encode())


def step_ends(tok, toks: list[int], seq_len: int, cfg: SearchConfig, eos, max_positions: int) -> bool:
    """Does the step whose tokens so far are ``toks`` end with its last token? EOS, the step's token
    cap, the model's last position (the sequence is ``seq_len`` long), or the step delimiter in the
    step's text once its leading whitespace is skipped (a step may open with a blank line)."""
    if toks[-1] in eos or len(toks) >= cfg.max_step_tokens:
        return True
    if seq_len >= max_positions - 1:
        return True
    tail = tok.decode(toks[-8:])
    return cfg.step_delimiter in tail and cfg.step_delimiter in tok.decode(toks).lstrip()


def step_text(tok, toks: list[int], cfg: SearchConfig, eos) -> str:
    """A finished step's text: EOS and special tokens dropped, cut at the delimiter, stripped."""
    text = tok.decode([t for t in toks if t not in eos], skip_special_tokens=True)
    return text.split(cfg.step_delimiter)[0].strip()


def step_terminal(text: str, toks: list[int], depth: int, seq_len: int, cfg: SearchConfig, eos,
                  max_positions: int, answer_re: re.Pattern | None = None) -> bool:
    """Is a finished step at ``depth`` the last of its path? EOS, a final answer, the depth cap, or
    a sequence with no room for another token."""
    answer_re = answer_re or re.compile(cfg.answer_pattern)
    return (bool(toks) and toks[-1] in eos) or bool(answer_re.search(text)) or depth >= cfg.max_depth \
        or seq_len >= max_positions - 1


class _SharedCount:
    """An int kept in ``obj._counts``, so every per-request view of a backend adds to one total."""

    def __set_name__(self, owner, name):
        self.name = name

    def __get__(self, obj, owner=None):
        return self if obj is None else obj._counts[self.name]

    def __set__(self, obj, value):
        obj._counts[self.name] = value


class EngineBackend:
    live_states = _SharedCount()     # states handed out and not yet released
    llm_rounds = _SharedCount()      # LLM calls made by collaborative steps
    draft_proposed = _SharedCount()  # speculative: drafted tokens
    draft_accepted = _SharedCount()  # speculative: drafted tokens accepted

    def __init__(self, engine, scheduler, cfg: SearchConfig, *, llm=None, prm=None, base=None,
                 options: BackendOptions | None = None):
        self.engine, self.scheduler, self.cfg = engine, scheduler, cfg
        self.llm, self.prm, self.base = llm, prm, base
        self.opt = options or BackendOptions()
        self.slm = engine.role("slm")
        self.tok = self.slm.tokenizer
        self.eos = set(self.slm.eos_token_ids)
        self.answer_re = re.compile(cfg.answer_pattern)
        self.cost = CostRecord()
        self.measures_request_cost = True   # solve() reports our measured counts per request
        if prm is not None:
            prm.cost = self.cost
        for lm in (llm, base):
            if lm is not None and hasattr(lm, "cost"):
                lm.cost = self.cost         # a local LLM (or base) charges what it computes itself
        self._counts = dict.fromkeys(("live_states", "llm_rounds", "draft_proposed", "draft_accepted"), 0)
        self._ready: dict[int, tuple[int, torch.Tensor]] = {}  # child seq_id -> (length, parent's ready logits)

    def check_config(self, cfg: SearchConfig) -> None:
        """Raise ConfigError if this backend cannot run ``cfg`` (before any state exists)."""
        check_stack_runs(cfg, has_llm=self.llm is not None, has_base=self.base is not None)

    def with_config(self, cfg: SearchConfig) -> "EngineBackend":
        """This backend generating with one request's ``cfg`` (sampling, fusion, step rules);
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
        _check_fits(self.slm, ids, "question")
        if prm_ids is not None:
            _check_fits(self.prm.model, prm_ids, "the PRM's prompt for the question")
        cache = self.engine.cache
        slm = cache.new_sequence(self.slm.key, ids)
        try:
            prm = None if prm_ids is None else cache.new_sequence(self.prm.model.key, prm_ids)
        except BaseException:
            cache.free(slm)
            raise
        charge(self.cost, prefix_cache_tokens=slm.cached_tokens + (prm.cached_tokens if prm else 0))
        self.live_states += 1
        return NodeState(slm, prm, 0, ())

    def _root_ids(self, question: str) -> tuple[list[int], list[int] | None]:
        return slm_prompt_ids(self.tok, question), None if self.prm is None else self.prm.root_ids(question)

    async def expand(self, state: NodeState, action: str, n: int) -> list[StepOut]:
        if action not in ("slm", "collab", "llm"):
            raise ValueError(f"unknown action {action!r}")
        if action != "slm" and self.llm is None:
            raise ValueError(f"action {action!r} needs a general LLM; none is configured")
        res = await settle([self._child(state, action, i) for i in range(n)],
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
        self.live_states -= 1
        if self.live_states == 0:  # idle engine: give the LLM's (and base's) session blocks back
            for lm in (self.llm, self.base):
                if hasattr(lm, "release_sessions"):
                    lm.release_sessions()

    # -- one child ------------------------------------------------------------------------
    def _generator(self, key: tuple) -> torch.Generator:
        g = torch.Generator(device=self.engine.cache.pool.device)
        g.manual_seed(node_seed(self.cfg.seed, key))
        return g

    async def _child(self, parent: NodeState, action: str, i: int) -> StepOut:
        cache = self.engine.cache
        key = parent.key + ((action, i),)
        seq = cache.fork(parent.slm)
        start = len(seq.token_ids)
        fault = prm = None
        if parent.ready is not None:
            self._ready[seq.seq_id] = (start, parent.ready)
        try:
            gen = self._generator(key)
            with self.cost.timed(f"expand_{action}"):
                try:
                    if action == "slm":
                        await self._slm_step(seq, gen)
                    elif self.opt.collab_mode == "exact":
                        await self._exact_collab_step(seq, gen, 1.0 if action == "llm" else None)
                    else:
                        await self._speculative_step(seq, gen, 1.0 if action == "llm" else None)
                except LLMError as e:
                    if self.opt.on_llm_fault == "fail":
                        raise
                    fault = f"llm_{e.kind}"
                    self.cost.add_fault(fault)
                    cache.truncate(seq, start)  # throw the partial step away: redo it with the SLM
                    await self._slm_step(seq, self._generator(key + ("fallback",)))
            toks = seq.token_ids[start:]
            text = self._step_text(toks)
            if parent.prm is not None:
                prm = cache.fork(parent.prm)
                prm.token_ids += self.prm.step_ids(text, first=parent.depth == 0)
        except BaseException:
            cache.free(seq)
            if prm is not None:
                cache.free(prm)
            raise
        finally:
            self._ready.pop(seq.seq_id, None)
        depth = parent.depth + 1
        terminal = step_terminal(text, toks, depth, len(seq.token_ids), self.cfg, self.eos,
                                 self.slm.model.max_positions, self.answer_re)
        self.live_states += 1
        if action != "slm" and fault is None:
            self.cost.llm_calls += 1
        state = NodeState(seq, prm, depth, key, parent.steps + [text], step_tokens=len(toks))
        return StepOut(text, toks, state, terminal, action, fault)

    def _step_text(self, toks: list[int]) -> str:
        return step_text(self.tok, toks, self.cfg, self.eos)

    def _ends(self, seq: Sequence, start: int) -> bool:
        """Does the step that began at `start` end with the last token of seq?"""
        return step_ends(self.tok, seq.token_ids[start:], len(seq.token_ids), self.cfg, self.eos,
                         self.slm.model.max_positions)

    # -- SLM alone ---------------------------------------------------------------------------
    def _sample(self, logits: torch.Tensor, gen: torch.Generator) -> int:
        if logits.device.type == "cpu":  # noise for the kept tokens only, nucleus by partial sort
            return int(sample_kept(logits[None], self.cfg.temperature, 0, self.cfg.top_p, gen)[0])
        noise = make_noise(1, logits.shape[-1], gen, logits.device)
        return int(sample(logits[None].float(), self.cfg.temperature, 0, self.cfg.top_p, noise)[0])

    async def _slm_step(self, seq: Sequence, gen: torch.Generator) -> None:
        start = len(seq.token_ids)
        while True:
            logits = await self._slm_forward(seq)
            seq.token_ids.append(self._sample(logits, gen))
            if self._ends(seq, start):
                break

    async def _slm_forward(self, seq: Sequence):
        ready = self._ready.get(seq.seq_id)
        if ready is not None and ready[0] == len(seq.token_ids):  # same tokens as when it was computed
            return ready[1]
        logits = await self.scheduler.forward(seq)
        # what the forward computed: preemption or a late prefix-cache match may have changed it
        charge(self.cost, slm_tokens=seq.last_computed, prefix_cache_tokens=seq.last_hit)
        return logits

    # -- fusion -----------------------------------------------------------------------------
    def _fused_logp(self, slm_logits: torch.Tensor, llm_rows: list[TokenLogprobs], alpha: float | None,
                    base_rows: list[TokenLogprobs] | None = None):
        """Fused log-probs [R, V] of SLM logits rows and LLM rows (full or top-k); with
        ``base_rows`` (full rows of the SLM's base) the rule is proxy, else log-linear."""
        a = self.cfg.fusion_alpha if alpha is None else alpha
        slm_lp = torch.log_softmax(slm_logits.float(), -1)
        base_lp = None if base_rows is None else self._rows(base_rows, slm_lp)
        if all(r.full for r in llm_rows):
            llm_lp = self._rows(llm_rows, slm_lp)
        else:  # top-k endpoint: fuse over the union of both top-k sets (see engine/llm/topk.py)
            u = union_support(slm_lp, llm_rows, self.opt.topk_support)
            slm_lp, llm_lp = u.slm_logp, u.llm_logp
            if base_lp is not None:  # off the support llm is -inf: 0 - 0 there keeps proxy's z at -inf, not NaN
                zero = torch.zeros_like(slm_lp)
                slm_lp, base_lp = torch.where(u.support, slm_lp, zero), torch.where(u.support, base_lp, zero)
        if base_lp is None:
            return fuse_logprobs(slm_lp, llm_lp, a, "loglinear")
        return fuse_logprobs(slm_lp, llm_lp, a, "proxy", base_lp)

    @staticmethod
    def _rows(rows: list[TokenLogprobs], like: torch.Tensor) -> torch.Tensor:
        """Full rows as one [R, V] tensor on ``like``'s device, in vocabulary order (an endpoint's
        rows may come in any id order; a local model's are already on the device: no copy)."""
        lp = torch.stack([r.logprobs for r in rows]).to(like.device, torch.float32)
        ids = torch.stack([r.ids for r in rows]).to(like.device)
        return torch.empty_like(like).scatter_(1, ids, lp)

    def _proxy(self, alpha: float | None) -> bool:
        """Base rows are needed: a collab step under proxy (an llm step is the LLM alone)."""
        return self.cfg.fusion_rule == "proxy" and alpha is None

    async def _base_rows(self, ids: list[int], n_rows: int, proxy: bool):
        if not proxy:
            return None
        if self.base is None:
            raise ConfigError("fusion_rule='proxy' needs the SLM's base model")
        cut = len(ids) - n_rows + 1  # rows after ids[cut-1] and after each later token
        return await self.base.score(ids[:cut], ids[cut:])

    async def _llm_rows(self, coro, n_tokens: int):
        self.llm_rounds += 1
        if not hasattr(self.llm, "cost"):  # remote: charge the positions the endpoint scored
            charge(self.cost, llm_tokens=n_tokens)
        return await coro

    async def _exact_collab_step(self, seq: Sequence, gen: torch.Generator, alpha) -> None:
        start = len(seq.token_ids)
        while True:
            ids = list(seq.token_ids)
            slm_logits, row, base = await gather_all(self._slm_forward(seq),
                                                     self._llm_rows(self.llm.next_logprobs(ids), 1),
                                                     self._base_rows(ids, 1, self._proxy(alpha)))
            if slm_logits.is_cuda and row.full:
                seq.token_ids.append(self._fuse_and_sample(slm_logits, row, alpha, base, gen))
            else:
                z = self._fused_logp(slm_logits[None], [row], alpha, base)[0]
                seq.token_ids.append(self._sample(z, gen))
            if self._ends(seq, start):
                break

    def _fuse_and_sample(self, slm_logits, row: TokenLogprobs, alpha, base_rows, gen) -> int:
        """GPU: fusion and sampling in one launch (kernels/fused_sampling.fused_sample), no fused [V]
        row in between. It fuses raw SLM logits: log-softmax shifts a row by a constant, and both
        rules are linear in the SLM row, so the fused distribution is _fused_logp's."""
        a = self.cfg.fusion_alpha if alpha is None else alpha
        slm = slm_logits[None].float()
        llm = self._rows([row], slm)
        noise = make_noise(1, slm.shape[-1], gen, slm.device)
        if base_rows is None:
            tok = fused_sample(slm, llm, a, "loglinear", self.cfg.temperature, 0, self.cfg.top_p, noise)
        else:
            tok = fused_sample(slm, llm, a, "proxy", self.cfg.temperature, 0, self.cfg.top_p, noise,
                               self._rows(base_rows, slm))
        return int(tok[0])

    async def _speculative_step(self, seq: Sequence, gen: torch.Generator, alpha) -> None:
        from kernels.spec_verify import spec_verify
        start = len(seq.token_ids)
        T, top_p = self.cfg.temperature, self.cfg.top_p
        while True:
            base = len(seq.token_ids)
            draft, slm_rows, ended = [], [], False
            while len(draft) < self.opt.max_draft:  # SLM drafts until the step ends or K tokens
                logits = await self._slm_forward(seq)
                slm_rows.append(logits)
                t = self._sample(logits, gen)
                draft.append(t)
                seq.token_ids.append(t)
                if self._ends(seq, start):
                    ended = True
                    break
            # SLM row after the draft (bonus position) and the LLM's rows, concurrently.
            bonus, llm_rows, base_rows = await gather_all(
                self._slm_forward(seq),
                self._llm_rows(self.llm.score(seq.token_ids[:base], draft), len(draft) + 1),
                self._base_rows(list(seq.token_ids), len(draft) + 1, self._proxy(alpha)))
            slm_all = torch.stack(slm_rows + [bonus])
            q = processed_probs(torch.stack(slm_rows), T, 0, top_p)
            p = processed_probs(self._fused_logp(slm_all, llm_rows, alpha, base_rows), T, 0, top_p)
            K, V, dev = len(draft), q.shape[-1], p.device
            acc_noise = torch.rand(1, K, generator=gen, device=gen.device).to(dev)
            res_noise = make_noise(1, V, gen, dev)
            # every kernel argument on the logits' device: a Triton launch refuses CPU pointers among CUDA ones
            n_acc, out = spec_verify(torch.tensor([draft], device=dev), torch.tensor([K], dtype=torch.int32, device=dev),
                                     q[None], p[None], acc_noise, res_noise)
            n_acc, out = n_acc.tolist()[0], out[0].tolist()  # two small copies back, once per round
            self.draft_proposed += K
            self.draft_accepted += n_acc
            # Only the last draft token can end the step: if it was accepted, the step is done
            # exactly as token-by-token sampling would have stopped there (no bonus token).
            if n_acc == K and ended:
                return
            self.engine.cache.truncate(seq, base + n_acc)  # keep the accepted tokens' K/V
            seq.token_ids.append(out[n_acc])
            if self._ends(seq, start):
                return
