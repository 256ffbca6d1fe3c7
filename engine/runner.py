"""Runs one model over a batch of sequences on the shared paged KV cache.

prefill, extend and decode are one operation here: each sequence computes its pending
tokens (`token_ids[num_computed:]`): a whole prompt, k drafted tokens over a cached prefix,
or the one token just sampled. `prepare` builds the batch metadata; `run` executes it.
"""
from __future__ import annotations

from typing import Literal, NamedTuple

import torch

from engine.context import Context, use_context
from engine.kv.cache import KVCache, KVPoolExhausted, Sequence
from engine.positions import check_fits

Want = Literal["last", "all", "none", "hidden"]  # hidden: (last logits row, its feature row)


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
        )
        return Batch(i64[:T], i64[T:2 * T], ctx, cu)

    # -- execution ----------------------------------------------------------------
    def run(self, seqs: list[Sequence], want: Want | list[Want] = "last") -> list[torch.Tensor | None]:
        """Compute every pending token; return per sequence the logits of its last row
        ([V]), of all its new rows ([n, V]), or None."""
        wants = [want] * len(seqs) if isinstance(want, str) else list(want)
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
            sel = [b - 1] if w in ("last", "hidden") else list(range(a, b)) if w == "all" else []
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
