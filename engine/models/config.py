"""Model hyper-parameters, independent of where the checkpoint came from.

`ModelConfig` is what the rest of gboost sees of a checkpoint's shape: it is built from a Hugging
Face `config.json` (`ModelConfig.from_hf_dict`) or from GGUF metadata (`gboost.models.gguf_format`).

Conventions (the model code relies on them):
- `attention_bias` means q/k/v projections carry a bias (Qwen2). `o_proj` and the MLP never do;
  checkpoints that need them are rejected here instead of being silently mis-run.
- `head_dim` defaults to `hidden_size // num_attention_heads`; `num_key_value_heads` to
  `num_attention_heads` (plain multi-head attention).
- `eos_token_ids` lists every id that ends generation (e.g. Qwen2.5-Instruct: `<|im_end|>` and
  `<|endoftext|>`).
- `rope_scaling` (None for plain RoPE) is applied for the `linear`, `llama3` and `yarn` types and
  refused here for any other (engine/models/rope.py); the demo models use none.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from gboost.models.rope import check_rope_scaling

SUPPORTED_ARCHITECTURES: tuple[str, ...] = ("qwen2", "llama")

# HF `architectures[0]` / `model_type` -> our architecture name.
_HF_CLASS_TO_ARCH = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
}
_DEFAULT_ATTENTION_BIAS = {"qwen2": True, "llama": False}


def unsupported_architecture(arch: object, where: str = "") -> ValueError:
    """The one error message for an architecture gboost cannot run."""
    loc = f" in {where}" if where else ""
    return ValueError(
        f"unsupported model architecture {arch!r}{loc}; gboost supports: {', '.join(SUPPORTED_ARCHITECTURES)}"
    )


@dataclass
class ModelConfig:
    architecture: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    max_position_embeddings: int = 2048
    tie_word_embeddings: bool = False
    attention_bias: bool | None = None
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)
    rope_scaling: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.architecture not in SUPPORTED_ARCHITECTURES:
            raise unsupported_architecture(self.architecture)
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.attention_bias is None:
            self.attention_bias = _DEFAULT_ATTENTION_BIAS[self.architecture]
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "num_key_value_heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; give head_dim explicitly"
                )
            self.head_dim = self.hidden_size // self.num_attention_heads
        if not isinstance(self.head_dim, int) or self.head_dim <= 0 or self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be a positive even int (RoPE), got {self.head_dim!r}")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                f"num_key_value_heads {self.num_key_value_heads}"
            )
        self.rms_norm_eps = float(self.rms_norm_eps)
        self.rope_theta = float(self.rope_theta)
        self.max_position_embeddings = int(self.max_position_embeddings)
        self.tie_word_embeddings = bool(self.tie_word_embeddings)
        self.attention_bias = bool(self.attention_bias)
        if self.bos_token_id is not None:
            self.bos_token_id = int(self.bos_token_id)
        self.eos_token_ids = _dedup_ints(self.eos_token_ids)
        check_rope_scaling(self.rope_scaling)

    # ------------------------------------------------------------------ views
    @property
    def q_size(self) -> int:
        return self.num_attention_heads * self.head_dim

    @property
    def kv_size(self) -> int:
        return self.num_key_value_heads * self.head_dim

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Inverse of `to_dict` (our own format, e.g. the GGUF cache's meta.json)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def expected_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every tensor the model needs, under its Hugging Face name, with its shape."""
        h, i, q, kv = self.hidden_size, self.intermediate_size, self.q_size, self.kv_size
        shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (self.vocab_size, h)}
        for layer in range(self.num_hidden_layers):
            p = f"model.layers.{layer}."
            shapes[p + "self_attn.q_proj.weight"] = (q, h)
            shapes[p + "self_attn.k_proj.weight"] = (kv, h)
            shapes[p + "self_attn.v_proj.weight"] = (kv, h)
            shapes[p + "self_attn.o_proj.weight"] = (h, q)
            if self.attention_bias:
                shapes[p + "self_attn.q_proj.bias"] = (q,)
                shapes[p + "self_attn.k_proj.bias"] = (kv,)
                shapes[p + "self_attn.v_proj.bias"] = (kv,)
            shapes[p + "mlp.gate_proj.weight"] = (i, h)
            shapes[p + "mlp.up_proj.weight"] = (i, h)
            shapes[p + "mlp.down_proj.weight"] = (h, i)
            shapes[p + "input_layernorm.weight"] = (h,)
            shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes["model.norm.weight"] = (h,)
        if not self.tie_word_embeddings:
            shapes["lm_head.weight"] = (self.vocab_size, h)
        return shapes

    # --------------------------------------------------------------- HF input
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "ModelConfig":
        """Build from a Hugging Face `config.json` dict (transformers 4.x or 5.x layout)."""
        if not isinstance(d, dict):
            raise ValueError(f"expected a config dict, got {type(d).__name__}")
        arch = _hf_architecture(d)
        if d.get("hidden_act", "silu") != "silu":
            raise ValueError(f"unsupported hidden_act {d.get('hidden_act')!r}; gboost's MLP is SwiGLU (silu)")
        if d.get("mlp_bias"):
            raise ValueError("checkpoints with mlp_bias=true are not supported")
        attention_bias = _DEFAULT_ATTENTION_BIAS[arch]
        if arch == "llama" and d.get("attention_bias"):
            raise ValueError(
                "llama checkpoints with attention_bias=true (biases on q/k/v *and* o_proj) are not supported"
            )
        if arch == "qwen2" and d.get("use_sliding_window"):
            raise ValueError("qwen2 checkpoints with use_sliding_window=true are not supported")
        missing = [k for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                               "num_attention_heads") if d.get(k) is None]
        if missing:
            raise ValueError(f"config is missing required field(s): {', '.join(missing)}")

        rope_params = d.get("rope_parameters") or {}
        rope_theta = d.get("rope_theta")
        if rope_theta is None:
            rope_theta = rope_params.get("rope_theta", 10000.0)
        rope_scaling = d.get("rope_scaling")
        if rope_scaling is None and rope_params.get("rope_type", "default") != "default":
            rope_scaling = {k: v for k, v in rope_params.items() if k != "rope_theta"}

        eos = d.get("eos_token_id")
        eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
        return cls(
            architecture=arch,
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            rms_norm_eps=d.get("rms_norm_eps", 1e-6),
            rope_theta=rope_theta,
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            tie_word_embeddings=d.get("tie_word_embeddings", False),
            attention_bias=attention_bias,
            bos_token_id=d.get("bos_token_id"),
            eos_token_ids=eos_ids,
            rope_scaling=rope_scaling,
        )


def _hf_architecture(d: dict[str, Any]) -> str:
    model_type = d.get("model_type")
    if model_type in SUPPORTED_ARCHITECTURES:
        return model_type
    for cls_name in d.get("architectures") or ():
        if cls_name in _HF_CLASS_TO_ARCH:
            return _HF_CLASS_TO_ARCH[cls_name]
    raise unsupported_architecture(model_type or (d.get("architectures") or [None])[0], "config.json")


def _dedup_ints(values) -> list[int]:
    out: list[int] = []
    for v in values or ():
        v = int(v)
        if v not in out:
            out.append(v)
    return out
