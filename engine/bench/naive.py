"""G-Boost and the fusion baseline on plain transformers, written the way a research prototype is.

:class:`NaiveExecutor` implements the search's StepExecutor protocol (engine/search/protocol.py)
with nothing but ``AutoModelForCausalLM`` forward calls, and the engine's own search policy
(``gboost.search.api.solve``) drives it, so against ``EngineExecutor`` only model execution differs:

* every tree node writes its step with fresh HF caches built from the node's full token prefix
  (nothing is reused between nodes, siblings or requests);
* a collaborative token runs the SLM and then the LLM, each with its own cache, and fuses the two
  distributions in Python: softmax((1 - alpha) log p_slm + alpha log p_llm);
* the judge PRM reads the whole judge prompt (question, every step so far, the question put to the
  judge) again for every step it scores, one state after another;
* nothing is batched and nothing overlaps: calls run in order, requests one after another.

The prompts (SLM chat prompt, judge prompt), the step-end rule, the terminal rule and each node's
sampling seed are the engine's own model-free helpers, and answers come out of the same search
code, so under greedy settings both implementations choose the same steps and the same answers
(tests/bench/test_naive_equal.py). Supported: fusion_rule "loglinear", PRM kinds judge and token_pair.
Checkpoints load into transformers by the engine's own names for them (:func:`load_hf`).
"""
from __future__ import annotations

import copy
import functools
import inspect
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from gboost.prm.scorer import PRMPrompts, PRMSpec
from gboost.collab.rules import child_temperature, node_seed, slm_prompt_ids, step_ends, step_terminal, step_text
from gboost.cost import CostRecord, charge
from gboost.sampling import sample_token
from gboost.search.config import ConfigError, SearchConfig
from gboost.search.protocol import ACTIONS, StepOut

__all__ = ["NaiveExecutor", "NaiveState", "hf_greedy", "load_hf"]


def _cache_kw(model) -> str:
    return _cache_kw_of(type(model))


@functools.lru_cache(maxsize=None)
def _cache_kw_of(cls) -> str:
    """The name transformers gives the KV cache argument and output: ``cache`` from 5.x on, where
    ``past_key_values`` is deprecated, ``past_key_values`` before."""
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


@dataclass
class NaiveState:
    ids: list[int]              # SLM prompt and every step so far (token ids)
    prm_ids: list[int] | None   # the judge prompt up to the newest step (no judge question yet)
    depth: int
    key: tuple                  # path of (action, index) from the root: seeds the node's sampling
    released: bool = False


class NaiveExecutor:
    """StepExecutor on transformers models: ``slm`` (required), ``llm`` (collab/llm steps) and
    ``prm`` (a causal LM read as a judge or token-pair PRM), all sharing the tokenizer ``tok``."""

    def __init__(self, tok, cfg: SearchConfig, slm, *, llm=None, prm=None, prm_spec: PRMSpec | None = None,
                 eos=None):
        self.tok, self.cfg = tok, cfg
        self.slm, self.llm, self.prm = slm, llm, prm
        self.eos = set(tok.eos_token_ids if eos is None else eos)
        self.max_positions = slm.config.max_position_embeddings
        self.prompts = None if prm is None else PRMPrompts(tok, prm_spec)
        if self.prompts is not None and self.prompts.spec.kind not in ("judge", "token_pair"):
            raise ValueError(f"the naive backend reads judge and token_pair PRMs, not {self.prompts.spec.kind!r}")
        self.answer_re = re.compile(cfg.answer_pattern)
        self.cost = CostRecord()
        self.live_states = 0
        self.check_config(cfg)

    def check_config(self, cfg: SearchConfig) -> None:
        if cfg.fusion_rule != "loglinear" and cfg.fuses():
            raise ConfigError("the naive backend fuses with fusion_rule='loglinear' only")

    def with_config(self, cfg: SearchConfig) -> "NaiveExecutor":
        self.check_config(cfg)
        view = copy.copy(self)  # cost and models shared, like EngineExecutor.with_config
        view.cfg, view.answer_re = cfg, re.compile(cfg.answer_pattern)
        return view

    # -- protocol ---------------------------------------------------------------------------
    async def root(self, question: str) -> NaiveState:
        ids = slm_prompt_ids(self.tok, question)
        prm_ids = None if self.prompts is None else self.prompts.root_ids(question)
        self.live_states += 1
        return NaiveState(ids, prm_ids, 0, ())

    async def expand(self, state: NaiveState, action: str, n: int, first: int = 0,
                     max_llm_tokens: int | None = None) -> list[StepOut]:
        self._check(state)
        if action not in ACTIONS:
            raise ValueError(f"unknown action {action!r}")
        if action != "slm" and self.llm is None:
            raise ValueError(f"action {action!r} needs a general LLM; none is configured")
        return [self._child(state, action, i, max_llm_tokens) for i in range(first, first + n)]

    async def score(self, states: list[NaiveState]) -> list[float]:
        if self.prm is None:
            raise ValueError("no PRM configured")
        with self.cost.timed("score"):
            return [self._reward(self._check(s)) for s in states]

    def release(self, state: NaiveState) -> None:
        self._check(state)
        state.released = True
        self.live_states -= 1

    # -- one child ----------------------------------------------------------------------------
    def _check(self, state: NaiveState) -> NaiveState:
        if state.released:
            raise RuntimeError("state used after release")
        return state

    def _child(self, parent: NaiveState, action: str, i: int, max_llm_tokens: int | None = None) -> StepOut:
        key = parent.key + ((action, i),)
        gen = torch.Generator().manual_seed(node_seed(self.cfg.seed, key))
        with self.cost.timed(f"expand_{action}"):
            toks = self._step(parent.ids, action, gen, child_temperature(self.cfg, i), max_llm_tokens)
        text = step_text(self.tok, toks, self.cfg, self.eos)
        ids = parent.ids + toks
        depth = parent.depth + 1
        terminal = step_terminal(text, toks, depth, len(ids), self.cfg, self.eos, self.max_positions, self.answer_re)
        prm_ids = None
        if parent.prm_ids is not None:
            prm_ids = parent.prm_ids + self.prompts.step_ids(text, first=parent.depth == 0)
        if action != "slm":
            charge(self.cost, llm_calls=1)
        self.live_states += 1
        return StepOut(text, toks, NaiveState(ids, prm_ids, depth, key), terminal, action)

    @torch.inference_mode()
    def _step(self, prefix: list[int], action: str, gen: torch.Generator, temperature: float,
              max_llm_tokens: int | None = None) -> list[int]:
        """One step, token by token: each model gets the whole prefix once, then one token a call
        on its own HF cache (what ``generate()`` does, with a step-end check per token); an LLM
        step also ends at its share of a token budget (one LLM position a token)."""
        models = {"slm": [("slm_tokens", self.slm)], "llm": [("llm_tokens", self.llm)],
                  "collab": [("slm_tokens", self.slm), ("llm_tokens", self.llm)]}[action]
        caches: list = [None] * len(models)
        feed, toks = list(prefix), []
        while True:
            rows = []
            for j, (what, m) in enumerate(models):
                kw = _cache_kw(m)
                out = m(input_ids=torch.tensor([feed], device=m.device), use_cache=True, logits_to_keep=1,
                        **{kw: caches[j]})
                caches[j] = getattr(out, kw)
                rows.append(out.logits[0, -1].float().cpu())
                context = {"llm_context_tokens": len(feed) - 1} if what == "llm_tokens" else {}
                charge(self.cost, **{what: len(feed)}, **context)
            if action == "collab":
                a = self.cfg.fusion_alpha
                z = torch.log_softmax((1 - a) * torch.log_softmax(rows[0], -1) + a * torch.log_softmax(rows[1], -1), -1)
            else:
                z = rows[0]
            t = sample_token(z, temperature, self.cfg.top_p, gen)
            toks.append(t)
            if step_ends(self.tok, toks, len(prefix) + len(toks), self.cfg, self.eos, self.max_positions) \
                    or (max_llm_tokens is not None and action != "slm" and len(toks) >= max_llm_tokens):
                return toks
            feed = [t]

    @torch.inference_mode()
    def _reward(self, s: NaiveState) -> float:
        """The PRM's reward of the newest step: the whole judge prompt, from scratch."""
        p = self.prompts
        ids = s.prm_ids + (p._suffix if p.spec.kind == "judge" else [])
        logits = self.prm(input_ids=torch.tensor([ids], device=self.prm.device), logits_to_keep=1).logits[0, -1]
        charge(self.cost, prm_tokens=len(ids))
        probs = torch.softmax(logits.float(), -1)
        if p.spec.kind == "judge":
            return float(probs[p.yes_id])
        return float(probs[p.good_id] / (probs[p.good_id] + probs[p.bad_id]))


# -- transformers: loading and its own greedy decode --------------------------------------------
def load_hf(name_or_path: str, dtype: str | torch.dtype = torch.float32, device: str = "cpu"):
    """``AutoModelForCausalLM`` for what the engine loads by the same argument: a demo name (its
    assembled GGUF), a ``.gguf`` file or a Hugging Face directory."""
    import transformers
    from gboost.engine import parse_dtype
    from gboost.models import registry

    dt = parse_dtype(dtype)
    path = Path(name_or_path)
    if not path.exists() and name_or_path in registry.list_models():
        path = registry.model_path(name_or_path)
    if path.suffix == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dt)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dt)
    return model.to(device).eval()


@torch.inference_mode()
def hf_greedy(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """``generate()`` greedy, exactly ``new_tokens`` tokens per prompt (equal-length prompts, no padding)."""
    x = torch.tensor(prompts, device=model.device)
    out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, attention_mask=torch.ones_like(x))
    return out[:, x.shape[1]:].tolist()
