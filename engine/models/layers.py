"""Decoder building blocks: RMSNorm, rotary embedding, paged attention, SwiGLU MLP."""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from engine.context import get_context
from engine.models.rope import rope_inv_freq
from kernels.kv_write import store_kv
from kernels.paged_attention import paged_attention


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the weight, as the HF reference does.
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


class Rotary(nn.Module):
    """Non-interleaved (rotate-half) RoPE, the HF Qwen2/Llama convention; ``scaling`` is a
    config's ``rope_scaling`` (see engine/models/rope.py)."""

    def __init__(self, head_dim: int, theta: float, max_positions: int, scaling: dict | None = None,
                 max_position_embeddings: int | None = None):
        super().__init__()
        inv, att = rope_inv_freq(head_dim, theta, scaling, max_position_embeddings)
        t = torch.arange(max_positions, dtype=torch.float32)
        freqs = torch.outer(t, inv)
        self.register_buffer("cos", freqs.cos() * att, persistent=False)
        self.register_buffer("sin", freqs.sin() * att, persistent=False)

    def forward(self, positions: torch.Tensor, x: torch.Tensor, max_len: int) -> torch.Tensor:
        # x: [T, H, D]; rotate in fp32 for exactness, cast back. max_len bounds positions + 1, from the
        # batch metadata on the host: reading positions.max() would sync with the GPU twice a layer.
        if max_len > self.cos.shape[0]:
            raise ValueError(f"a sequence of {max_len} tokens exceeds the model's {self.cos.shape[0]} positions")
        cos = self.cos[positions].unsqueeze(1)
        sin = self.sin[positions].unsqueeze(1)
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        out = torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
        return out.to(x.dtype)


class Attention(nn.Module):
    def __init__(self, hidden: int, n_heads: int, n_kv: int, head_dim: int, bias: bool, rotary: Rotary):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim
        self.q_proj = nn.Linear(hidden, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, n_kv * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, n_kv * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden, bias=False)
        self.rotary = rotary
        self.scale = head_dim ** -0.5
        self.k_cache: torch.Tensor | None = None  # bound by the runner to this layer's pool view
        self.v_cache: torch.Tensor | None = None

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        ctx = get_context()
        q = self.rotary(positions, self.q_proj(x).view(T, self.n_heads, self.head_dim), ctx.max_seq_len)
        k = self.rotary(positions, self.k_proj(x).view(T, self.n_kv, self.head_dim), ctx.max_seq_len)
        v = self.v_proj(x).view(T, self.n_kv, self.head_dim)
        store_kv(k, v, self.k_cache, self.v_cache, ctx.slot_mapping)
        o = paged_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.seq_lens,
                            ctx.cu_seqlens_q, self.scale)
        return self.o_proj(o.reshape(T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
