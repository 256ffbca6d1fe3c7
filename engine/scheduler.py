"""Batches forward work from every live request: one batch per model per tick.

Search coroutines call `await scheduler.forward(seq)`; the scheduler collects whatever all
live requests are waiting on, runs it as one batch per model in a worker thread (so the
event loop keeps serving HTTP calls to a remote LLM meanwhile) and hands each coroutine its
logits. A batch that does not fit in the KV pool is shrunk; work that cannot fit while
nothing else runs fails with KVPoolExhausted instead of waiting forever.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch

from engine.engine import Engine
from engine.kv.cache import KVPoolExhausted, Sequence


@dataclass
class _Work:
    seq: Sequence
    want: str
    fut: asyncio.Future


class Scheduler:
    def __init__(self, engine: Engine, max_batch_tokens: int = 8192, gather_yields: int = 4):
        self.engine = engine
        self.max_batch_tokens = max_batch_tokens
        self.gather_yields = gather_yields  # event-loop turns to wait for more work before a tick
        self.pending: dict[str, list[_Work]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gboost-forward")
        self.batches = 0            # forward batches run (for tests and metrics)
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # recent batches only: a server runs for days

    async def forward(self, seq: Sequence, want: str = "last") -> torch.Tensor | None:
        """Compute seq's pending tokens in the next batch of its model; logits per `want`."""
        self._ensure_running()
        fut = asyncio.get_running_loop().create_future()
        self.pending.setdefault(seq.model, []).append(_Work(seq, want, fut))
        self._wake.set()
        return await fut

    async def forward_many(self, seqs: list[Sequence], want: str = "last") -> list:
        return list(await asyncio.gather(*(self.forward(s, want) for s in seqs)))

    def _ensure_running(self) -> None:
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._loop())

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            for _ in range(self.gather_yields):
                await asyncio.sleep(0)
            ran = False
            for key in list(self.pending):
                batch, rest = self._pick(key)
                self.pending[key] = rest
                if not batch:
                    continue
                ran = True
                runner = self.engine.models[key].runner
                try:
                    outs = await loop.run_in_executor(self._pool, runner.run,
                                                      [w.seq for w in batch], [w.want for w in batch])
                except BaseException as e:  # every waiter learns the failure; the loop lives on
                    for w in batch:
                        if not w.fut.done():
                            w.fut.set_exception(e)
                    continue
                self.batches += 1
                self.batch_sizes.append(len(batch))
                for w, o in zip(batch, outs):
                    if not w.fut.done():
                        w.fut.set_result(o)
            if not ran:
                self._fail_unfittable()
            if any(self.pending.values()):
                self._wake.set()

    def _pick(self, key: str) -> tuple[list[_Work], list[_Work]]:
        """The longest prefix of the queue that fits the KV pool and the token budget."""
        items = [w for w in self.pending.get(key, []) if not w.fut.cancelled()]
        cache, batch, claims, tokens = self.engine.cache, [], [], 0
        seen: set[int] = set()
        for i, w in enumerate(items):
            if w.seq.seq_id in seen:
                return batch, items[i:]
            n = max(w.seq.num_pending, 1)
            if batch and tokens + n > self.max_batch_tokens:
                return batch, items[i:]
            if not cache.can_reserve(claims + [(w.seq, n)]):
                return batch, items[i:]
            batch.append(w)
            claims.append((w.seq, n))
            seen.add(w.seq.seq_id)
            tokens += n
        return batch, []

    def _fail_unfittable(self) -> None:
        # Nothing ran this tick, so no block will be freed by waiting: fail what cannot fit.
        for key, items in self.pending.items():
            for w in items:
                if not w.fut.done():
                    w.fut.set_exception(KVPoolExhausted(
                        f"KV pool exhausted: {w.seq.num_pending} tokens for {key!r} cannot fit in "
                        f"{self.engine.cache.blocks.num_free()} free blocks"))
            items.clear()

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False)
