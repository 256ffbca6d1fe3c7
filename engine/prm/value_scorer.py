"""The `value_head` PRM: a trained step-value head (engine/prm/value_head.py) on a resident model.

Two sequence kinds, fixed by the head's card:
  slm   the SLM's own rows. A step's last token is still pending when the step ends; scoring
        computes it (`want="hidden"`), keeps its hidden row for the score and its logits for
        the child's first next-token draw (`state.NodeState.ready`), so a score costs no forward the
        expansion would not run anyway. No PRM sequence exists at all.
  text  another resident model (e.g. the general LLM) on an append-only sequence of its own:
        the SLM's chat prompt, then each step followed by the step delimiter.
"""
from __future__ import annotations

import torch

from gboost.kv.cache import Sequence
from gboost.prm.value_head import HeadCard, check_base, load_head
from gboost.cost import charge

from gboost.collab.rules import slm_prompt_ids

STEP_JOIN = "\n\n"


def text_root_ids(tok, question: str) -> list[int]:
    return slm_prompt_ids(tok, question)  # the SLM's prompt, in this model's own chat template


def text_step_ids(tok, text: str) -> list[int]:
    return tok.encode_piece(text + STEP_JOIN)


def feature_role(engine, card: HeadCard) -> str:
    """The resident role whose model the head was trained on (the SLM first)."""
    from gboost.prm.value_head import model_fingerprint
    roles = ["slm"] if card.sequence == "slm" else [r for r in ("slm", "llm", "prm") if r in engine.roles]
    for r in roles:
        if model_fingerprint(engine.role(r).model, engine.role(r).adapter) == card.fingerprint:
            return r
    names = ", ".join(f"{r}={engine.role(r).key}" for r in roles)
    m = engine.role(roles[0])
    check_base(card, m.model, m.key, m.adapter)  # raises with the details
    raise ValueError(f"value head base {card.base_model!r} is none of the resident models ({names})")


class ValueHeadScorer:
    kind = "value_head"

    def __init__(self, engine, scheduler, directory: str, role: str | None = None):
        self.engine, self.scheduler = engine, scheduler
        self.head, self.card = load_head(directory)
        role = role or feature_role(engine, self.card)
        self.model = engine.role(role)
        check_base(self.card, self.model.model, self.model.key, self.model.adapter)
        lm = self.model.model
        if lm.capture_layer not in (None, self.card.layer):
            raise ValueError(f"{self.model.key} already feeds a head from layer {lm.capture_layer}; "
                             f"this head reads layer {self.card.layer}")
        lm.capture_layer = self.card.layer
        self.reads_slm = self.card.sequence == "slm"
        if self.reads_slm and engine.roles[role] != engine.roles["slm"]:
            raise ValueError("a head on the SLM's own rows needs its base model to be the SLM")
        self.tok = self.model.tokenizer
        self.tokens_computed = 0
        self.cost = None  # the executor's running total, set by the executor

    def check_rows(self, resident) -> None:
        """ValueError unless the head was trained on ``resident``'s rows (a role view, its adapter
        included): what a request that runs the SLM with another adapter must pass."""
        check_base(self.card, resident.model, resident.key, resident.adapter)

    def root_ids(self, question: str) -> list[int] | None:
        return None if self.reads_slm else text_root_ids(self.tok, question)  # slm: no PRM sequence

    def step_ids(self, step_text: str, first: bool) -> list[int]:
        return text_step_ids(self.tok, step_text)

    def _rewards(self, rows) -> list[float]:
        feats = torch.stack([h for _, h in rows])
        return [float(x) for x in self.head.score(feats.cpu())]

    async def score(self, seqs: list[Sequence]) -> list[float]:
        """`text` heads: reward of each PRM sequence's newest step (its pending tokens)."""
        rows = await self.scheduler.forward_many(seqs, "hidden")
        computed = sum(s.last_computed for s in seqs)
        self.tokens_computed += computed
        charge(self.cost, prm_tokens=computed, prefix_cache_tokens=sum(s.last_hit for s in seqs))
        return self._rewards(rows)

    async def score_slm(self, states) -> list[float]:
        """`slm` heads: each state's SLM row at its last token; its logits wait in `state.ready`."""
        seqs = [s.slm for s in states]
        rows = await self.scheduler.forward_many(seqs, "hidden")
        # these tokens are the children's first forward, charged to the SLM as they always were
        charge(self.cost, slm_tokens=sum(s.last_computed for s in seqs),
               prefix_cache_tokens=sum(s.last_hit for s in seqs),
               prm_tokens_saved=sum(s.step_tokens for s in states))
        for st, (logits, _) in zip(states, rows):
            st.ready = logits
        return self._rewards(rows)
