"""Batch metadata the attention layers read, set by the runner around one forward pass.

Kept beside the model (not threaded through every forward signature) so that
`model(input_ids, positions)` stays the whole interface of a decoder.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch


@dataclass
class Context:
    slot_mapping: torch.Tensor   # [T] int64: pool slot of every new token (block * BS + offset)
    block_tables: torch.Tensor   # [B, max_blocks] int32, padded with 0
    seq_lens: torch.Tensor       # [B] int32: length of each sequence after this pass
    cu_seqlens_q: torch.Tensor   # [B+1] int32: packed offsets of the new tokens
    max_q_len: int
    max_seq_len: int


_CTX: Context | None = None


def get_context() -> Context:
    if _CTX is None:
        raise RuntimeError("attention called outside a runner pass (no batch context set)")
    return _CTX


@contextmanager
def use_context(ctx: Context):
    global _CTX
    prev, _CTX = _CTX, ctx
    try:
        yield ctx
    finally:
        _CTX = prev
