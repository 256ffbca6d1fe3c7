"""A deterministic CompletionBackend for server / remote-client tests.

Characters are tokens (one id per character of ALPHABET) plus an EOS id; the
model is a fixed random bigram table: the next-token distribution depends only
on the last token. So the exact log-probs of any position are known in closed
form (``true_logprobs``), which lets tests compare what crosses HTTP with the
ground truth.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Optional

import torch

from gboost.llm.base import TokenLogprobs
from gboost.server.backend import BackendInputError

ALPHABET = "abcdefghijklmnopqrstuvwxyz .,!?\n0123456789"


class FakeBackend:
    def __init__(
        self,
        seed: int = 1234,
        max_model_len: int = 64,
        compute_s: float = 0.0,
        model_name: str = "fake-bigram",
        neg_inf_token: Optional[int] = None,
        fail_with: Optional[BaseException] = None,
        token_latency_s: float = 0.0,
    ) -> None:
        self.model_name = model_name
        self.token_latency_s = token_latency_s  # pause after each streamed token
        self.eos_id = len(ALPHABET)
        self.vocab_size = len(ALPHABET) + 1
        self.max_model_len = max_model_len
        self.eos_token_ids = [self.eos_id]
        self.compute_s = compute_s
        self.fail_with = fail_with
        self.calls: Counter[str] = Counter()
        self.generating = 0  # generate() calls running now (a cancelled stream must end its own)
        g = torch.Generator().manual_seed(seed)
        logits = torch.randn(self.vocab_size, self.vocab_size, generator=g) * 2.0
        logits[:, self.eos_id] -= 4.0  # keep generations going
        if neg_inf_token is not None:
            logits[:, neg_inf_token] = float("-inf")
        self.table = torch.log_softmax(logits, dim=-1)
        self._char_to_id = {c: i for i, c in enumerate(ALPHABET)}

    # -- tokenizer ------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        try:
            return [self._char_to_id[c] for c in text]
        except KeyError as e:
            raise BackendInputError(f"character {e.args[0]!r} is not in the vocabulary") from None

    encode_prompt = encode  # no BOS in this vocabulary

    def encode_chat(self, messages: list[dict]) -> list[int]:
        """A chat template of this alphabet: "role content" lines, then "assistant " to answer."""
        return self.encode("".join(f"{m['role']} {m['content']}\n" for m in messages) + "assistant ")

    def decode(self, ids: list[int]) -> str:
        return "".join(ALPHABET[i] for i in ids if i != self.eos_id)

    # -- ground truth ---------------------------------------------------------
    def true_logprobs(self, ids: list[int]) -> torch.Tensor:
        """Full next-token log-probs after ``ids`` ([V])."""
        return self.table[ids[-1]].clone()

    def _row(self, dist: torch.Tensor, top_k: int, actual: Optional[int]) -> TokenLogprobs:
        V = self.vocab_size
        if top_k >= V:
            return TokenLogprobs(torch.arange(V), dist.clone(), True)
        vals, idx = torch.topk(dist, top_k) if top_k > 0 else (dist[:0], torch.zeros(0, dtype=torch.int64))
        ids, lps = idx.tolist(), vals.tolist()
        if actual is not None and actual not in ids:
            ids.append(actual)
            lps.append(float(dist[actual]))
        return TokenLogprobs(torch.tensor(ids, dtype=torch.int64), torch.tensor(lps, dtype=torch.float32), False)

    async def _work(self, name: str) -> None:
        self.calls[name] += 1
        if self.fail_with is not None:
            raise self.fail_with
        if self.compute_s:
            await asyncio.to_thread(time.sleep, self.compute_s)  # "CPU work", off the event loop

    # -- CompletionBackend ----------------------------------------------------
    async def prompt_logprobs(self, ids: list[int], top_k: int) -> list[TokenLogprobs]:
        await self._work("prompt_logprobs")
        return [
            self._row(self.table[t], top_k, ids[i + 1] if i + 1 < len(ids) else None) for i, t in enumerate(ids)
        ]

    async def generate(
        self,
        ids: list[int],
        max_tokens: int,
        temperature: float,
        top_p: float,
        seed: Optional[int],
        stop_ids: list[int],
        top_k_logprobs: int,
        on_token=None,
    ) -> tuple[list[int], list[TokenLogprobs]]:
        await self._work("generate")
        self.generating += 1
        try:
            return await self._generate(ids, max_tokens, temperature, top_p, seed, stop_ids, top_k_logprobs,
                                        on_token)
        finally:
            self.generating -= 1

    async def _generate(self, ids, max_tokens, temperature, top_p, seed, stop_ids, top_k_logprobs, on_token):
        g = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**31, ()).item()))
        last = ids[-1]
        out: list[int] = []
        rows: list[TokenLogprobs] = []
        for _ in range(max_tokens):
            dist = self.table[last]
            if temperature == 0:
                tok = int(torch.argmax(dist))
            else:
                probs = torch.softmax(dist / temperature, dim=-1)
                sp, si = torch.sort(probs, descending=True)
                keep = torch.cumsum(sp, 0) - sp < top_p
                sp = torch.where(keep, sp, torch.zeros_like(sp))
                tok = int(si[torch.multinomial(sp / sp.sum(), 1, generator=g)])
            out.append(tok)
            if top_k_logprobs > 0:  # like the engine backend: 0 means "not requested"
                rows.append(self._row(dist, top_k_logprobs, tok))
            if on_token is not None:
                on_token(tok, rows[-1] if top_k_logprobs > 0 else None)
                await asyncio.sleep(self.token_latency_s)
            last = tok
            if tok in stop_ids:
                break
        return out, rows

    def greedy(self, ids: list[int], n: int) -> list[int]:
        out, last = [], ids[-1]
        for _ in range(n):
            last = int(torch.argmax(self.table[last]))
            out.append(last)
        return out


from contextlib import contextmanager  # noqa: E402


@contextmanager
def server_factory():
    """``make(backend=None, fault=None, **create_app_kwargs) -> BackgroundServer`` (``.backend`` is the
    FakeBackend, ``.app.state`` has ``faults`` / ``metrics``); every server started is stopped on exit."""
    from gboost.server.app import create_app
    from gboost.server.uvicorn_server import BackgroundServer
    servers = []

    def make(backend=None, fault=None, **kw):
        backend = backend or FakeBackend()
        srv = BackgroundServer(create_app(backend, backend.model_name, fault, **kw), graceful_shutdown_s=0.5)
        srv.start()
        srv.backend = backend
        servers.append(srv)
        return srv

    try:
        yield make
    finally:
        for srv in servers:
            srv.stop()
