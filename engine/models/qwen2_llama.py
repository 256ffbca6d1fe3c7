"""Qwen2 and Llama decoders (they differ only in attention bias and tokenizer details), with their
blocks: RMSNorm, rotary embedding, paged attention, SwiGLU MLP.

Parameter names follow Hugging Face, so a checkpoint's state dict loads as it is.
`forward(input_ids, positions)` returns hidden rows; `compute_logits` is applied only to
the rows the caller needs (last token per sequence, or every drafted token).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gboost.context import get_context
from gboost.models.config import ModelConfig
from gboost.models.rope import rope_inv_freq
from gboost.kernels._common import memoized
from gboost.kernels.kv_write import store_kv
from gboost.kernels.paged_attention import paged_attention


# -- blocks ---------------------------------------------------------------------------------
class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 and cast back before the weight, as the HF reference does.
        return self.weight * F.rms_norm(x.float(), self.weight.shape, eps=self.eps).to(x.dtype)


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

    def forward(self, positions: torch.Tensor, x: torch.Tensor, max_len: int, memo: dict | None = None) -> torch.Tensor:
        # x: [T, H, D]; rotate in fp32 for exactness, cast back. max_len bounds positions + 1, from the
        # batch metadata on the host: reading positions.max() would sync with the GPU twice a layer.
        # x*[cos, cos] + [x2, x1]*[-sin, sin] is x1*cos - x2*sin, x2*cos + x1*sin, bit for bit.
        def rows():
            if max_len > self.cos.shape[0]:
                raise ValueError(f"a sequence of {max_len} tokens exceeds the model's {self.cos.shape[0]} positions")
            cos, sin = self.cos[positions], self.sin[positions]
            return torch.cat((cos, cos), -1).unsqueeze(1), torch.cat((-sin, sin), -1).unsqueeze(1)
        cos, sin = memoized(memo, ("rope", id(self)), rows)
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return (xf * cos + torch.cat((x2, x1), dim=-1) * sin).to(x.dtype)


class Attention(nn.Module):
    FUSED = {"qkv_proj": ("q_proj", "k_proj", "v_proj")}  # one packed matmul on CPU (cpu_linear.py)

    def __init__(self, hidden: int, n_heads: int, n_kv: int, head_dim: int, bias: bool, rotary: Rotary):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = n_heads, n_kv, head_dim
        self.q_proj = nn.Linear(hidden, n_heads * head_dim, bias=bias)
        self.k_proj = nn.Linear(hidden, n_kv * head_dim, bias=bias)
        self.v_proj = nn.Linear(hidden, n_kv * head_dim, bias=bias)
        self.o_proj = nn.Linear(n_heads * head_dim, hidden, bias=False)
        self.qkv_proj: nn.Module | None = None
        self.rotary = rotary
        self.scale = head_dim ** -0.5
        self.k_cache: torch.Tensor | None = None  # bound by the runner to this layer's pool view
        self.v_cache: torch.Tensor | None = None

    def forward(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        T = x.shape[0]
        ctx = get_context()
        H, K, D = self.n_heads, self.n_kv, self.head_dim
        if self.qkv_proj is None:
            q, k, v = self.q_proj(x), self.k_proj(x), self.v_proj(x)
            q = self.rotary(positions, q.view(T, H, D), ctx.max_seq_len, ctx.memo)
            k = self.rotary(positions, k.view(T, K, D), ctx.max_seq_len, ctx.memo)
        else:  # q and k side by side: one rotation
            qk, v = self.qkv_proj(x).split([(H + K) * D, K * D], -1)
            q, k = self.rotary(positions, qk.view(T, H + K, D), ctx.max_seq_len, ctx.memo).split([H, K], 1)
        v = v.view(T, K, D)
        store_kv(k, v, self.k_cache, self.v_cache, ctx.slot_mapping, ctx.memo)
        o = paged_attention(q, self.k_cache, self.v_cache, ctx.block_tables, ctx.seq_lens,
                            ctx.cu_seqlens_q, self.scale, memo=ctx.memo)
        return self.o_proj(o.reshape(T, self.n_heads * self.head_dim))


class MLP(nn.Module):
    FUSED = {"gate_up_proj": ("gate_proj", "up_proj")}

    def __init__(self, hidden: int, inter: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, inter, bias=False)
        self.up_proj = nn.Linear(hidden, inter, bias=False)
        self.down_proj = nn.Linear(inter, hidden, bias=False)
        self.gate_up_proj: nn.Module | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gate_up_proj is None:
            return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))
        gate, up = self.gate_up_proj(x).chunk(2, -1)
        return self.down_proj(F.silu(gate) * up)


# -- decoder --------------------------------------------------------------------------------
class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig, rotary: Rotary):
        super().__init__()
        self.self_attn = Attention(cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads,
                                   cfg.head_dim, cfg.attention_bias, rotary)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, positions: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        h = h + self.self_attn(positions, self.input_layernorm(h))
        return h + self.mlp(self.post_attention_layernorm(h))


def rotary_for(cfg: ModelConfig) -> Rotary:
    # the cos/sin tables are built for at most 32k positions (memory), whatever the config allows
    return Rotary(cfg.head_dim, cfg.rope_theta, min(cfg.max_position_embeddings, 32768), cfg.rope_scaling,
                  cfg.max_position_embeddings)


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.rotary = rotary_for(cfg)
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg, self.rotary) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class CausalLM(nn.Module):
    """Qwen2ForCausalLM / LlamaForCausalLM on the paged KV cache."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = Backbone(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    @property
    def max_positions(self) -> int:
        return self.model.rotary.cos.shape[0]

    #: 1-based decoder layer whose output `forward` keeps in `captured` (value-head features), or None
    capture_layer: int | None = None
    captured: torch.Tensor | None = None

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        h = self.model.embed_tokens(input_ids)
        for i, layer in enumerate(self.model.layers, 1):
            h = layer(positions, h)
            if i == self.capture_layer:
                self.captured = h
        return self.model.norm(h)

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.lm_head(hidden).float()

    def bind_kv(self, kv_view: torch.Tensor) -> None:
        """Point every attention layer at its slice of the shared pool ([NB, L, 2, BS, H, D])."""
        for i, layer in enumerate(self.model.layers):
            layer.self_attn.k_cache = kv_view[:, i, 0]
            layer.self_attn.v_cache = kv_view[:, i, 1]

    def load_weights(self, state_dict: dict[str, torch.Tensor]) -> None:
        sd = dict(state_dict)
        if self.config.tie_word_embeddings:
            sd.pop("lm_head.weight", None)
        missing, unexpected = self.load_state_dict(sd, strict=False)
        missing = [m for m in missing if not (m == "lm_head.weight" and self.config.tie_word_embeddings)]
        if missing or unexpected:
            raise ValueError(f"checkpoint does not fit the {self.config.architecture} model: "
                             f"missing {missing[:5]}, unexpected {unexpected[:5]}")


def build_model(cfg: ModelConfig, state_dict: dict[str, torch.Tensor] | None, dtype: torch.dtype,
                device: str | torch.device = "cpu") -> CausalLM:
    if cfg.architecture not in ("qwen2", "llama"):
        raise ValueError(f"unsupported architecture {cfg.architecture!r}; supported: qwen2, llama")
    with torch.device("meta"):
        model = CausalLM(cfg)
    model = model.to_empty(device=device).to(dtype)
    # Rotary tables are computed, not loaded: rebuild them (meta init left them empty) in fp32.
    model.model.rotary = rotary_for(cfg).to(device)
    for layer in model.model.layers:
        layer.self_attn.rotary = model.model.rotary
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if state_dict is not None:
        model.load_weights(state_dict)
    return model.eval().requires_grad_(False)
