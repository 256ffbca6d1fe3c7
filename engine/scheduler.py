"""Batches forward work from every live request: one batch per model per tick, and runs it.

Search coroutines call `await scheduler.forward(seq)`; the scheduler collects whatever all
live requests are waiting on, runs it as one batch per model (with `offload`, in a worker
thread, so the event loop keeps serving HTTP calls to a remote LLM meanwhile) and hands each
coroutine its logits. Block tables change only on the event loop (`prepare` and `finish`); a
worker thread runs the forward alone.

A batch that does not fit in the KV pool is shrunk. When nothing fits at all, room is made
by preemption (vLLM's recompute mode, at block granularity, so a fork's shared prefix is
never dropped): if idle sequences (not waiting on a forward) can give enough, they do, least
recently run first; otherwise the work of the oldest request (`Sequence.born`, inherited by
forks) goes first, and idle sequences, then waiting ones of newer requests, make room for it.
A preempted sequence keeps its tokens; its next forward recomputes them or matches them again
from the prefix cache, and callers charge what the forward computed (`last_computed`). Work
that cannot fit even so fails alone with KVPoolExhausted. Never a hang; age decides who waits.

`ModelRunner` runs one model over one such batch on the shared paged KV cache: prefill, extend
and decode are one operation (each sequence computes its pending tokens, `token_ids[num_computed:]`:
a whole prompt, k drafted tokens over a cached prefix, or the one token just sampled); `prepare`
builds the batch metadata, `compute` is the forward, `finish` commits it.
"""
from __future__ import annotations

import asyncio
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal, NamedTuple, Protocol

import torch

from gboost.context import Context, use_context
from gboost.kv.cache import KVCache, KVPoolExhausted, Sequence
from gboost.models.cpu_linear import pack_linears
from gboost.models.lora import adapters_of
from gboost.positions import PromptTooLong, check_fits


class ModelHost(Protocol):
    """What the scheduler reads of an Engine (gboost.engine imports this module, not the reverse)."""
    cache: KVCache
    models: dict   # model key -> resident model with a ``runner`` (ModelRunner)


# hidden: (last logits row, its feature row); an int n: the logits of the last n new rows only (a
# speculative check of n-1 drafts must not pay the vocabulary projection for a whole uncached context)
Want = Literal["last", "all", "none", "hidden"] | int


class Batch(NamedTuple):
    """One forward's inputs: the pending tokens of every sequence, packed."""
    input_ids: torch.Tensor   # [T] int64
    positions: torch.Tensor   # [T] int64
    context: Context          # what attention reads (engine/context.py)
    cu_seqlens: list[int]     # [B+1] host copy: sequence i's new tokens are rows cu[i]:cu[i+1]


class ModelRunner:
    def __init__(self, name: str, model: torch.nn.Module, cache: KVCache):
        self.name, self.model, self.cache = name, model, cache
        self.device = cache.pool.device
        model.bind_kv(cache.view(name))
        pack_linears(model)  # bf16 on CPU: weights in oneDNN's layout once, not reordered per call
        self.tokens_computed = 0  # counts every token this runner pushed through the model

    # -- metadata -----------------------------------------------------------------
    def check_fits(self, seq: Sequence) -> None:
        """PromptTooLong if seq is longer than this model's positions."""
        check_fits(len(seq.token_ids), self.model.max_positions, self.name, f"sequence {seq.seq_id}")

    def prepare(self, seqs: list[Sequence], wants: list[Want]) -> Batch:
        if len({s.seq_id for s in seqs}) != len(seqs):
            raise ValueError("a sequence appears twice in one batch")
        for i, s in enumerate(seqs):
            if s.model != self.name:
                raise ValueError(f"sequence of model {s.model!r} given to runner {self.name!r}")
            if not s.token_ids:
                raise ValueError("cannot run an empty sequence")
            if s.adapter is not None and s.adapter not in adapters_of(self.model):
                raise ValueError(f"model {self.name!r} holds no LoRA adapter {s.adapter!r} "
                                 f"(loaded: {', '.join(sorted(adapters_of(self.model))) or 'none'})")
            self.check_fits(s)
            # only the last row wanted: cached blocks can stand in for computing the rest
            self.cache.begin_run(s, rematch=wants[i] in ("last", "hidden"))
        if not self.cache.can_reserve([(s, s.num_pending) for s in seqs]):
            raise KVPoolExhausted(f"KV pool exhausted: batch of {len(seqs)} sequences for {self.name!r} "
                                  f"does not fit in {self.cache.blocks.num_free()} free blocks")
        ids, pos, slots, lens, cu = [], [], [], [], [0]
        for s in seqs:
            n = s.num_pending
            slots += self.cache.reserve_run(s)
            ids += s.token_ids[s.num_computed:]
            pos += range(s.num_computed, len(s.token_ids))
            lens.append(len(s.token_ids))
            cu.append(cu[-1] + n)
        B, T = len(seqs), len(ids)
        width = max(len(s.block_table) for s in seqs)
        tables = [b for s in seqs for b in s.block_table + [0] * (width - len(s.block_table))]
        # The whole batch's metadata in two host buffers (int64, int32), copied once each: pinned and
        # non_blocking on CUDA, so the copies overlap the host's work instead of syncing per tensor.
        i64 = torch.tensor(ids + pos + slots, dtype=torch.int64)
        i32 = torch.tensor(tables + lens + cu, dtype=torch.int32)
        if self.device.type == "cuda":
            i64, i32 = i64.pin_memory(), i32.pin_memory()
        i64, i32 = i64.to(self.device, non_blocking=True), i32.to(self.device, non_blocking=True)
        ctx = Context(
            slot_mapping=i64[2 * T:],
            block_tables=i32[:B * width].view(B, width),
            seq_lens=i32[B * width:B * width + B],
            cu_seqlens_q=i32[B * width + B:],
            max_q_len=max(cu[i + 1] - cu[i] for i in range(B)),
            max_seq_len=max(lens),
            lora_rows=self._lora_rows(seqs, cu),
        )
        return Batch(i64[:T], i64[T:2 * T], ctx, cu)

    def _lora_rows(self, seqs: list[Sequence], cu: list[int]) -> tuple:
        """Each adapter's packed rows (one group of every row when the whole batch shares one)."""
        by: dict[str, list[int]] = {}
        for i, s in enumerate(seqs):
            if s.adapter is not None:
                by.setdefault(s.adapter, []).extend(range(cu[i], cu[i + 1]))
        if len(by) == 1 and len(next(iter(by.values()))) == cu[-1]:
            return ((next(iter(by)), None),)
        return tuple((name, torch.tensor(rows, dtype=torch.int64).to(self.device)) for name, rows in by.items())

    # -- execution ----------------------------------------------------------------
    def run(self, seqs: list[Sequence], want: Want | list[Want] = "last") -> list[torch.Tensor | None]:
        """Compute every pending token; return per sequence the logits of its last row
        ([V]), of all its new rows or of its last `want` ones ([n, V]), or None."""
        wants = list(want) if isinstance(want, list) else [want] * len(seqs)
        batch = self.prepare(seqs, wants)
        out = self.compute(batch, wants)
        self.finish(seqs, batch.cu_seqlens)
        return out

    @torch.inference_mode()
    def compute(self, batch: Batch, wants: list[Want]) -> list[torch.Tensor | None]:
        """The forward pass of a prepared batch; touches no bookkeeping, so the scheduler runs it
        in a worker thread while the event loop keeps the block tables to itself."""
        cu = batch.cu_seqlens
        with use_context(batch.context):
            hidden = self.model(batch.input_ids, batch.positions)
        rows, spans = [], []
        for i, w in enumerate(wants):
            a, b = cu[i], cu[i + 1]
            sel = ([b - 1] if w in ("last", "hidden") else list(range(a, b)) if w == "all" else
                   list(range(max(a, b - w), b)) if isinstance(w, int) else [])
            spans.append((len(rows), len(rows) + len(sel), w))
            rows += sel
        logits = self.model.compute_logits(hidden[rows]) if rows else None
        if "hidden" in wants:  # the captured layer's row (value-head features), else the final one
            feats = (hidden if self.model.capture_layer is None else self.model.captured)[rows].float()
        self.model.captured = None  # do not keep a whole batch's activations alive until the next one
        out: list = []
        for a, b, w in spans:
            out.append(None if w == "none" else logits[a] if w == "last" else
                       (logits[a], feats[a]) if w == "hidden" else logits[a:b])
        return out

    def finish(self, seqs: list[Sequence], cu: list[int]) -> None:
        """Commit what the forward wrote (publishing full blocks) after `compute` returned."""
        self.cache.finish_run(seqs, [cu[i + 1] - cu[i] for i in range(len(seqs))])
        self.tokens_computed += cu[-1]


@dataclass
class _Work:
    seq: Sequence
    want: Want
    fut: asyncio.Future


class Scheduler:
    def __init__(self, engine: ModelHost, max_batch_tokens: int = 8192, gather_yields: int = 4,
                 preempt: bool = True, offload: bool = True):
        self.engine = engine
        # offload: run forwards in a worker thread, so the loop stays responsive (servers, remote
        # LLM calls). Inline is faster where nothing else needs the loop: on a CPU the worker's
        # OpenMP team and the loop thread's (sampling) contend for the same cores.
        self.offload = offload
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

    async def forward(self, seq: Sequence, want: Want = "last") -> torch.Tensor | None:
        """Compute seq's pending tokens in the next batch of its model; logits per `want`."""
        return await self._submit(seq, want)

    async def forward_many(self, seqs: list[Sequence], want: Want = "last") -> list:
        # queued at once, so no tick can see (and preempt) a sequence its caller already counted
        return list(await asyncio.gather(*[self._submit(s, want) for s in seqs]))

    def _submit(self, seq: Sequence, want: Want) -> asyncio.Future:
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
                    outs = (await loop.run_in_executor(self._pool, runner.compute, prepared, wants)
                            if self.offload else runner.compute(prepared, wants))
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
