"""CompletionBackend on a resident model of the engine: what `gboost serve` exposes.

Concurrent HTTP requests go through one Scheduler, so they share forward batches; the
forward runs in the scheduler's worker thread, never on the event loop.
"""
from __future__ import annotations

import copy

import torch

from gboost.llm.base import TokenLogprobs
from gboost.models.tokenizer import ChatTemplateError
from gboost.server.backend import BackendInputError
from gboost.server.limits import text_byte_limit
from gboost.sampling import SamplingParams


def _row(logp: torch.Tensor, top_k: int, actual: int | None) -> TokenLogprobs:
    k = min(max(top_k, 0), logp.shape[-1])
    ids = torch.topk(logp, k).indices if k else torch.empty(0, dtype=torch.int64)
    if actual is not None and not bool((ids == actual).any()):
        ids = torch.cat([ids, torch.tensor([actual])])
    return TokenLogprobs(ids.to(torch.int64), logp[ids].float(), full=False)


class EngineCompletionBackend:
    def __init__(self, engine, scheduler, role: str = "slm", model_name: str | None = None):
        self.engine, self.scheduler = engine, scheduler
        self.role = role
        self.m = engine.role(role)
        self.model_name = model_name or self.m.key
        self.vocab_size = self.m.config.vocab_size
        self.max_model_len = self.m.model.max_positions
        self.eos_token_ids = list(self.m.eos_token_ids)
        # bytes above which a prompt text can never fit (limits.text_byte_limit; None: no bound)
        self.text_byte_limit = text_byte_limit(self.m.tokenizer, self.max_model_len)

    def adapters(self) -> list[str]:
        """The LoRA adapters a request may name as its model (installed on this role's model)."""
        from gboost.models.lora import adapters_of
        return sorted(adapters_of(self.m.model))

    def for_model(self, name: str | None) -> "EngineCompletionBackend | None":
        """This backend, or a view running the adapter ``name`` (None if there is no such one)."""
        if name is None or name == self.model_name:
            return self
        if name not in self.adapters():
            return None
        view = copy.copy(self)
        view.m, view.model_name = self.engine.role(self.role, adapter=name), name
        return view

    def encode(self, text: str) -> list[int]:
        return self.m.tokenizer.encode_piece(text)

    def encode_prompt(self, text: str) -> list[int]:
        return self.m.tokenizer.encode_prompt(text)

    def decode(self, ids: list[int]) -> str:
        return self.m.tokenizer.decode(ids, skip_special_tokens=True)

    def encode_chat(self, messages: list[dict]) -> list[int]:
        tok = self.m.tokenizer
        if not tok.chat_template:
            raise BackendInputError(f"model {self.model_name!r} has no chat template: use /v1/completions")
        try:
            return tok.encode_chat(messages)
        except ChatTemplateError as e:
            raise BackendInputError(str(e)) from None

    def _check(self, ids: list[int]) -> None:
        if not ids:
            raise BackendInputError("prompt is empty")
        if len(ids) > self.max_model_len:
            raise BackendInputError(f"prompt of {len(ids)} tokens exceeds the model's {self.max_model_len}")

    async def prompt_logprobs(self, ids: list[int], top_k: int) -> list[TokenLogprobs]:
        self._check(ids)
        seq = self.m.new_sequence(self.engine.cache, list(ids))
        try:
            self.engine.cache.rewind(seq, 0)  # every position's distribution is wanted
            logits = await self.scheduler.forward(seq, "all")
        finally:
            self.engine.cache.free(seq)
        logp = torch.log_softmax(logits.float(), -1).cpu()
        return [_row(logp[i], top_k, ids[i + 1] if i + 1 < len(ids) else None) for i in range(len(ids))]

    async def generate(self, ids, max_tokens, temperature, top_p, seed, stop_ids, top_k_logprobs, on_token=None):
        self._check(ids)
        # The server always lists EOS in stop_ids, so stop_ids alone decide (ignore_eos).
        params = SamplingParams(temperature=temperature, top_p=top_p, max_tokens=max_tokens, seed=seed,
                                stop_token_ids=list(stop_ids), ignore_eos=True)
        rows = []

        def keep_row(logits, t):
            if top_k_logprobs:
                rows.append(_row(torch.log_softmax(logits.float(), -1).cpu(), top_k_logprobs, t))
            if on_token is not None:
                on_token(int(t), rows[-1] if top_k_logprobs else None)
        out = (await self.engine.agenerate(self.scheduler, list(ids), params, role=self.role,
                                           on_token=keep_row, adapter=self.m.adapter)).token_ids
        return out, rows
