"""Batches forward work from every live request: one batch per model per tick.

Search coroutines call `await scheduler.forward(seq)`; the scheduler collects whatever all
live requests are waiting on, runs it as one batch per model in a worker thread (so the
event loop keeps serving HTTP calls to a remote LLM meanwhile) and hands each coroutine its
logits. Block tables change only on the event loop (`prepare` and `finish`); the worker
thread runs the forward alone.

A batch that does not fit in the KV pool is shrunk. When nothing fits at all, room is made
by preemption (vLLM's recompute mode, at block granularity, so a fork's shared prefix is
never dropped): if idle sequences (not waiting on a forward) can give enough, they do, least
recently run first; otherwise the work of the oldest request (`Sequence.born`, inherited by
forks) goes first, and idle sequences, then waiting ones of newer requests, make room for it.
A preempted sequence keeps its tokens; its next forward recomputes them or matches them again
from the prefix cache, and callers charge what the forward computed (`last_computed`). Work
that cannot fit even so fails alone with KVPoolExhausted. Never a hang; age decides who waits.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from engine.kv.cache import KVPoolExhausted, Sequence
from engine.positions import PromptTooLong

if TYPE_CHECKING:
    from engine.engine import Engine


@dataclass
class _Work:
    seq: Sequence
    want: str
    fut: asyncio.Future


class Scheduler:
    def __init__(self, engine: "Engine", max_batch_tokens: int = 8192, gather_yields: int = 4,
                 preempt: bool = True):
        self.engine = engine
        self.preempt = preempt  # False: fail fast (the oldest waiting work) rather than recompute
        self._first: str | None = None  # the model whose queue goes first next tick
        self.max_batch_tokens = max_batch_tokens
        self.gather_yields = gather_yields  # event-loop turns to wait for more work before a tick
        self.pending: dict[str, list[_Work]] = {}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gboost-forward")
        self.batches = 0            # forward batches run (for tests and metrics)
        self.preemptions = 0        # sequences cut back to free blocks
        self.preempted_tokens = 0   # computed tokens they dropped (recomputed unless re-matched)
        self.batch_sizes: deque[int] = deque(maxlen=4096)  # recent batches only: a server runs for days

    async def forward(self, seq: Sequence, want: str = "last") -> torch.Tensor | None:
        """Compute seq's pending tokens in the next batch of its model; logits per `want`."""
        return await self._submit(seq, want)

    async def forward_many(self, seqs: list[Sequence], want: str = "last") -> list:
        # queued at once, so no tick can see (and preempt) a sequence its caller already counted
        return list(await asyncio.gather(*[self._submit(s, want) for s in seqs]))

    def _submit(self, seq: Sequence, want: str) -> asyncio.Future:
        self._ensure_running()
        fut = asyncio.get_running_loop().create_future()
        self.pending.setdefault(seq.model, []).append(_Work(seq, want, fut))
        self._wake.set()
        return fut

    def kv_stats(self) -> dict[str, int]:
        """Pool occupancy and preemption counters (for /metrics and benchmarks)."""
        cache = self.engine.cache
        blocks = cache.blocks
        return {"blocks_total": blocks.num_blocks, "blocks_free": blocks.num_free(), "blocks_cached": len(blocks.lru),
                "preemptions": self.preemptions, "preempted_tokens": self.preempted_tokens,
                "sequences_live": len(cache.live), "refcount_errors": cache.refcount_errors()}

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
            keys = sorted(self.pending, key=lambda k: k != self._first)  # room was made for its work
            self._first = None
            for key in keys:
                batch, rest = self._pick(key)
                self.pending[key] = rest
                if not batch:
                    continue
                ran = True
                runner = self.engine.models[key].runner
                seqs, wants = [w.seq for w in batch], [w.want for w in batch]
                try:
                    prepared = runner.prepare(seqs, wants)
                    outs = await loop.run_in_executor(self._pool, runner.compute, prepared, wants)
                    runner.finish(seqs, prepared.cu_seqlens)
                except BaseException as e:  # every waiter learns the failure; the loop lives on
                    for w in batch:
                        if not w.seq.freed:  # give back what was reserved and never written
                            self.engine.cache.truncate(w.seq, len(w.seq.token_ids))
                        if not w.fut.done():
                            w.fut.set_exception(e)
                    if isinstance(e, asyncio.CancelledError):
                        raise  # close(): the loop itself is being stopped
                    continue
                self.batches += 1
                self.batch_sizes.append(len(batch))
                for w, o in zip(batch, outs):
                    if not w.fut.done():
                        w.fut.set_result(o)
            if not ran:
                try:
                    self._make_room()
                except Exception as e:  # a bookkeeping bug must fail the waiters, not hang them
                    for items in self.pending.values():
                        for w in items:
                            if not w.fut.done():
                                w.fut.set_exception(e)
                        items.clear()
            if any(self.pending.values()):
                self._wake.set()

    def _pick(self, key: str) -> tuple[list[_Work], list[_Work]]:
        """The longest prefix of the queue that fits the KV pool and the token budget."""
        items = []
        runner = self.engine.models[key].runner
        for w in self.pending.get(key, []):
            if w.seq.freed and not w.fut.done():  # its request ended (e.g. a sibling forward failed)
                w.fut.set_exception(RuntimeError(f"sequence {w.seq.seq_id} was freed while waiting"))
            if not w.fut.done():
                try:  # one request's over-long sequence fails alone, not the batch it would join
                    runner.check_fits(w.seq)
                except PromptTooLong as e:
                    w.fut.set_exception(e)
            if not w.fut.done():
                items.append(w)
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

    def _make_room(self) -> None:
        """Nothing fit this tick. If idle sequences can give back enough blocks (their unshared
        tails, least recently run first) for a queue's first work, they do. Otherwise the
        oldest waiting sequence is served next: waiting sequences newer than it give back
        blocks too (newest first); if even that is not enough, its work fails alone."""
        cache = self.engine.cache
        waiting = [w for items in self.pending.values() for w in items if not w.fut.done()]
        if not waiting:
            return
        busy = {w.seq.seq_id: w.seq for w in waiting}
        idle = sorted((s for s in cache.live.values() if s.seq_id not in busy and cache.preemptible_blocks(s)),
                      key=lambda s: s.last_run)

        def need(w: _Work) -> int:
            return cache.blocks_needed(w.seq, max(w.seq.num_pending, 1))

        def preempt_until(victims: list[Sequence], n: int) -> None:
            for s in victims:
                if cache.blocks.can_allocate(n):
                    return
                self.preempted_tokens += cache.preempt(s)
                self.preemptions += 1

        heads = [w for items in self.pending.values() for w in items[:1] if not w.fut.done()]
        n_head = min((need(w) for w in heads), default=None)
        idle_room = sum(map(cache.preemptible_blocks, idle))
        if self.preempt and n_head is not None and cache.blocks.num_free() + idle_room >= n_head:
            preempt_until(idle, n_head)  # queue order kept: the batches stay as the queues made them
            return
        age = lambda q: (q.born, q.seq_id)  # noqa: E731 -- forks keep their request's birth
        oldest = min(waiting, key=lambda w: age(w.seq))
        newer = sorted((q for q in busy.values() if q.born > oldest.seq.born and cache.preemptible_blocks(q)),
                       key=age, reverse=True)
        queue = self.pending[oldest.seq.model]
        del queue[next(i for i, w in enumerate(queue) if w is oldest)]
        room = sum(map(cache.preemptible_blocks, idle + newer)) if self.preempt else 0
        if cache.blocks.num_free() + room < need(oldest):
            oldest.fut.set_exception(KVPoolExhausted(  # could never fit: keep everyone else's work
                f"KV pool exhausted: {oldest.seq.num_pending} tokens for {oldest.seq.model!r} need "
                f"{need(oldest)} blocks; {cache.blocks.num_free()} of {cache.blocks.num_blocks} are free"
                + (" and the rest are in use by this request or shared" if self.preempt
                   else " (preemption is off)")))
            return
        preempt_until(idle + newer, need(oldest))
        queue.insert(0, oldest)  # first in the next tick's batch, before any newer work
        self._first = oldest.seq.model

    def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self._pool.shutdown(wait=False)
