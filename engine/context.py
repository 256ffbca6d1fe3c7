"""Batch metadata the attention layers read, set by the runner around one forward pass.

Kept beside the model (not threaded through every forward signature) so that
`model(input_ids, positions)` stays the whole interface of a decoder.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch


@dataclass
class Context:
    slot_mapping: torch.Tensor   # [T] int64: pool slot of every new token (block * BS + offset)
    block_tables: torch.Tensor   # [B, max_blocks] int32, padded with 0
    seq_lens: torch.Tensor       # [B] int32: length of each sequence after this pass
    cu_seqlens_q: torch.Tensor   # [B+1] int32: packed offsets of the new tokens
    max_q_len: int
    max_seq_len: int
    # the rows each LoRA adapter tunes (models/lora.py): (adapter, row indices or None for every
    # row); empty when every sequence runs on the base weights
    lora_rows: tuple = ()
    # what layers derive from the above (rotary rows, attention's padding plan): the first layer
    # computes it, the others reuse it; a Context lives for one forward
    memo: dict = field(default_factory=dict)


# Thread-local: engines in one process (a server and a client in tests, say) may run
# forward passes on different threads at the same time.
_LOCAL = threading.local()


def get_context() -> Context:
    ctx = getattr(_LOCAL, "ctx", None)
    if ctx is None:
        raise RuntimeError("attention called outside a runner pass (no batch context set)")
    return ctx


@contextmanager
def use_context(ctx: Context):
    prev = getattr(_LOCAL, "ctx", None)
    _LOCAL.ctx = ctx
    try:
        yield ctx
    finally:
        _LOCAL.ctx = prev
