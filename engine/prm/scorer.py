"""Step scoring orchestration for the three PRM kinds, on append-only PRM sequences.

A node's PRM sequence is its parent's plus the new step's tokens, so scoring a child computes
only the step (and, for the judge, a short fixed suffix that is truncated right after).
  judge       any instruct model asked whether the latest step is correct; reward = P(yes-token)
  token_pair  Math-Shepherd style: a step tag token after each step; reward = P(good)/(P(good)+P(bad))
  two_class   Qwen2.5-Math-PRM style: `<extra_0>` after each step, a 2-way score head; reward = P(class 1)
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from gboost.kv.cache import Sequence
from gboost.cost import charge
from gboost.search.config import PRM_KINDS
from gboost.kernels.step_scoring import step_rewards
from gboost.prm.heads import TwoClassPRM

KINDS = tuple(k for k in PRM_KINDS if k != "value_head")  # the kinds a PRM model itself scores

JUDGE_SYSTEM = "You are a meticulous math teacher. You check a student's solution one step at a time."
JUDGE_HEAD = "Problem:\n{question}\n\nStudent's solution so far:\n\n"
JUDGE_QUESTION = "\n\nIs the most recent step of the student's solution correct? Answer Yes or No."


@dataclass
class PRMSpec:
    kind: str = "judge"
    yes_token: str = "Yes"        # judge
    step_tag: str = "\u043a\u0438"  # token_pair: Math-Shepherd's step tag ("ки")
    good_token: str = "+"         # token_pair
    bad_token: str = "-"          # token_pair
    separator: str = "<extra_0>"  # two_class
    step_join: str = "\n\n"

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown PRM kind {self.kind!r}; choose one of {KINDS}")


def single_token(tokenizer, text: str, what: str) -> int:
    ids = tokenizer.encode(text)
    if len(ids) != 1:
        raise ValueError(f"PRM {what} {text!r} must be one token, tokenizes to {ids}")
    return ids[0]


class PRMPrompts:
    """The PRM's token sequences (root prompt, step pieces, judge suffix) for a tokenizer and spec.
    Model-free, so a reference implementation (gboost.bench.naive) builds exactly the same ids."""

    def __init__(self, tok, spec: PRMSpec | None = None):
        self.tok = tok
        self.spec = spec or PRMSpec()
        k = self.spec.kind
        if k == "judge":
            self.yes_id = single_token(self.tok, self.spec.yes_token, "yes-token")
            self._suffix = self.tok.encode_piece(self._judge_tail())
        elif k == "token_pair":
            self.tag_id = single_token(self.tok, self.spec.step_tag, "step tag")
            self.good_id = single_token(self.tok, self.spec.good_token, "good token")
            self.bad_id = single_token(self.tok, self.spec.bad_token, "bad token")
        else:
            self.sep_id = single_token(self.tok, self.spec.separator, "separator")

    # -- sequence building (append-only) -------------------------------------------------
    def _judge_split(self) -> tuple[str, str]:
        marker = "\x00GBOOST_STEPS\x00"
        msgs = [{"role": "system", "content": JUDGE_SYSTEM},
                {"role": "user", "content": JUDGE_HEAD + marker}]
        text = self.tok.apply_chat_template(msgs, add_generation_prompt=True) \
            if getattr(self.tok, "chat_template", None) else JUDGE_SYSTEM + "\n" + JUDGE_HEAD + marker + "\n"
        head, tail = text.split(marker)
        return head, tail

    def _judge_tail(self) -> str:
        return JUDGE_QUESTION + self._judge_split()[1]

    def root_ids(self, question: str) -> list[int]:
        if self.spec.kind == "judge":
            head = self._judge_split()[0].replace("{question}", question)
            # a chat template writes its own BOS; a plain prompt gets the tokenizer's
            return self.tok.encode(head) if getattr(self.tok, "chat_template", None) else self.tok.encode_prompt(head)
        return self.tok.encode_prompt(question + self.spec.step_join)

    def step_ids(self, step_text: str, first: bool) -> list[int]:
        join = "" if first else self.spec.step_join
        ids = self.tok.encode_piece(join + step_text)
        if self.spec.kind == "token_pair":
            ids.append(self.tag_id)
        elif self.spec.kind == "two_class":
            ids.append(self.sep_id)
        return ids


class PRMScorer(PRMPrompts):
    def __init__(self, engine, scheduler, spec: PRMSpec | None = None, role: str = "prm"):
        self.engine, self.scheduler = engine, scheduler
        self.model = engine.role(role)
        super().__init__(self.model.tokenizer, spec)
        if isinstance(self.model.model, TwoClassPRM) and self.spec.kind != "two_class":
            raise ValueError(f"PRM {self.model.key!r} is a two-class PRM (a score head, no LM head): "
                             f"use prm_kind='two_class', not {self.spec.kind!r}")
        self.tokens_computed = 0
        self.cost = None  # the executor's running total, set by the executor

    # -- scoring ------------------------------------------------------------------------
    async def score(self, seqs: list[Sequence]) -> list[float]:
        """Reward of each sequence's newest step (its pending tokens), batched in one forward."""
        lens = [len(s.token_ids) for s in seqs]
        if self.spec.kind == "judge":
            for s in seqs:
                self.engine.cache.append(s, self._suffix)
        try:
            rows = await self.scheduler.forward_many(seqs, "last")
            computed = sum(s.last_computed for s in seqs)  # preemption and late matches included
            hits = sum(s.last_hit for s in seqs)
        finally:
            if self.spec.kind == "judge":
                for s, n in zip(seqs, lens):  # drop the judge suffix: children append after the step
                    if not s.freed:
                        self.engine.cache.truncate(s, n)
        self.tokens_computed += computed
        charge(self.cost, prm_tokens=computed, prefix_cache_tokens=hits)
        scores = torch.stack(rows)
        idx = torch.arange(len(seqs), device=scores.device)
        k = self.spec.kind
        if k == "judge":
            r = step_rewards(scores, idx, "judge", yes_id=self.yes_id)
        elif k == "token_pair":
            r = step_rewards(scores, idx, "token_pair", good_id=self.good_id, bad_id=self.bad_id)
        else:
            r = step_rewards(scores, idx, "two_class")
        return [float(x) for x in r.cpu()]
