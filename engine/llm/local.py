"""A general LLM resident in this engine, on the shared KV pool.

The GeneralLLM interface is stateless (token ids in, distributions out). Two things keep it
from recomputing prefixes: the pool's content-hash prefix cache (full blocks of any earlier
call are reused), and a small set of live *sessions*: the sequence of a recent call is taken
over by the next call that extends it (token-by-token fusion, or speculative rounds), so
only the new tokens are computed.
"""
from __future__ import annotations

from collections import OrderedDict

import torch

from gboost.cost import charge
from gboost.kv.cache import Sequence
from gboost.llm.base import TokenLogprobs


class LocalLLM:
    charges_itself = True   # GeneralLLM: computes on the engine's pool, charges it, keeps sessions
    prompt_note = None      # GeneralLLM: token ids on the engine's own pool, nothing to report

    def __init__(self, engine, scheduler, role: str = "llm", max_sessions: int = 64,
                 charge_as: str = "llm_tokens"):
        self.engine, self.scheduler = engine, scheduler
        self.model = engine.role(role)
        self.charge_as = charge_as  # the cost field its computed tokens go to (base_tokens for proxy's base)
        self.vocab_size = self.model.config.vocab_size
        self.max_sessions = max_sessions
        self._sessions: OrderedDict[int, Sequence] = OrderedDict()
        # rows stay on the logits' device: the fused step reads them there (no GPU -> CPU -> GPU trip)
        self._all_ids = torch.arange(self.vocab_size, device=engine.cache.pool.device)
        self.calls = 0
        self.tokens_computed = 0
        self.cost = None  # the executor's running total; the request's own record is charged too

    async def next_logprobs(self, token_ids: list[int]) -> TokenLogprobs:
        return (await self._run(list(token_ids), 1))[0]

    async def score(self, prefix_ids: list[int], draft_ids: list[int]) -> list[TokenLogprobs]:
        return await self._run(list(prefix_ids) + list(draft_ids), len(draft_ids) + 1)

    async def _run(self, ids: list[int], n_rows: int) -> list[TokenLogprobs]:
        if not ids:
            raise ValueError("LocalLLM needs at least one token of context")
        self.calls += 1
        seq = self._take_session(ids)
        cache = self.engine.cache
        try:
            cache.rewind(seq, len(ids) - n_rows)  # the last n_rows positions must be computed now
            logits = await self.scheduler.forward(seq, n_rows)
            computed = seq.last_computed  # not len(ids) - num_computed before: it may be preempted
            context = {"llm_context_tokens": max(0, computed - n_rows)} if self.charge_as == "llm_tokens" else {}
            charge(self.cost, **{self.charge_as: computed}, **context, prefix_cache_tokens=len(ids) - computed)
            self.tokens_computed += computed
        except BaseException:
            cache.free(seq)
            raise
        self._put_session(seq)
        logp = torch.log_softmax(logits.float(), dim=-1)  # want=n_rows: exactly those rows
        return [TokenLogprobs(self._all_ids, row, full=True) for row in logp]

    def _take_session(self, ids: list[int]) -> Sequence:
        """The live session sharing the longest prefix with ids, cut back and extended to ids, if
        it holds at least as much of ids as the prefix cache; else a new sequence on the cached
        blocks. (Sessions of other questions share the system prompt: taking one for that would
        recompute the whole question and path, which earlier calls on this path left cached.)"""
        best, best_lcp = None, 0
        for key, s in self._sessions.items():
            n = min(len(s.token_ids), len(ids))
            lcp = 0
            while lcp < n and s.token_ids[lcp] == ids[lcp]:
                lcp += 1
            if lcp > best_lcp:
                best, best_lcp = key, lcp
        cache = self.engine.cache
        if best is None or best_lcp < max(cache.block_size, cache.cached_prefix_len(self.model.key, ids, self.model.adapter)):
            return self.model.new_sequence(cache, ids)
        seq = self._sessions.pop(best)
        cache.truncate(seq, best_lcp)
        cache.append(seq, ids[best_lcp:])
        return seq

    def _put_session(self, seq: Sequence) -> None:
        self._sessions[seq.seq_id] = seq
        while len(self._sessions) > self.max_sessions:
            _, old = self._sessions.popitem(last=False)
            self.engine.cache.free(old)

    def release_sessions(self) -> None:
        while self._sessions:
            self.engine.cache.free(self._sessions.popitem()[1])

    async def aclose(self) -> None:
        self.release_sessions()
