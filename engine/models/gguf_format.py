"""What a GGUF file says, read without pickle through the `gguf` package: its metadata, the model
config they imply, and the Hugging Face name and layout of each tensor.

What llama.cpp's converter did, and what we undo:
- tensor names: `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, etc. (`hf_name`).
- llama only: q/k projection rows were permuted from HF's "rotate_half" RoPE layout to GGML's
  interleaved one (`permute_qk`); `unpermute_qk` is its exact inverse (as transformers does).
  Qwen2 is converted without that permutation (llama.cpp uses NEOX-style RoPE for it).
- Qwen2 GGUFs usually ship a separate `output.weight` (quantized differently from the embedding),
  so the result is untied (`lm_head.weight` present), exactly like transformers' GGUF loading.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from .config import SUPPORTED_ARCHITECTURES, ModelConfig, unsupported_architecture

GGUF_MAGIC = b"GGUF"


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def check_gguf_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"GGUF file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{p} is not a regular file")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{p} is not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")
    return p


def _fast_reader_class():
    from gguf import GGUFReader

    class FastGGUFReader(GGUFReader):
        """GGUFReader whose mapped file is a plain ndarray view of the memmap.

        The reader slices the file hundreds of thousands of times while parsing the token arrays;
        on an `np.memmap` every slice runs `memmap.__array_finalize__`. On a plain view of the same
        buffer it does not: parsing the 0.5B demo file drops from ~7 s to ~2 s. Same bytes, same API.
        """

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return FastGGUFReader


def open_gguf(path: str | os.PathLike):
    """`gguf.GGUFReader` for the file, with clear errors for missing/truncated/corrupted files."""
    p = check_gguf_path(path)
    try:
        reader = _fast_reader_class()(str(p), "r")
    except Exception as e:  # the reader fails deep inside numpy on a short or garbled file
        raise ValueError(
            f"cannot read GGUF file {p} ({p.stat().st_size} bytes): it looks truncated or corrupted "
            f"({type(e).__name__}: {e})"
        ) from e
    size = p.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ValueError(f"GGUF file {p} is truncated: tensor {t.name} ends at byte {end}, file has {size}")
    return reader


def _field_value(field) -> Any:
    try:
        return field.contents()
    except Exception:  # pragma: no cover - very old gguf
        return None


def read_metadata(reader, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Metadata as python values. With `keys`, only those (the big token arrays are cheap anyway)."""
    names = list(reader.fields) if keys is None else [k for k in keys if k in reader.fields]
    return {k: _field_value(reader.fields[k]) for k in names}


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
def config_from_gguf(meta: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]], path: str = "") -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise unsupported_architecture(arch, f"GGUF file {path}" if path else "GGUF metadata")

    def need(key: str):
        full = f"{arch}.{key}"
        if meta.get(full) is None:
            raise ValueError(f"GGUF file {path} lacks required metadata {full!r}")
        return meta[full]

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    if isinstance(kv_heads, list):  # per-layer lists exist for hybrid models; ours are uniform
        if len(set(kv_heads)) != 1:
            raise ValueError(f"GGUF file {path}: per-layer head_count_kv {kv_heads} is not supported")
        kv_heads = kv_heads[0]
    head_dim = meta.get(f"{arch}.attention.key_length")
    head_dim = int(head_dim) if head_dim is not None else hidden // heads
    value_length = meta.get(f"{arch}.attention.value_length")
    if value_length is not None and int(value_length) != head_dim:
        raise ValueError(f"GGUF file {path}: key_length {head_dim} != value_length {value_length} is not supported")
    rot = meta.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ValueError(f"GGUF file {path}: partial rotary (rope.dimension_count {rot} < head_dim {head_dim}) "
                         "is not supported")

    if "token_embd.weight" not in tensor_shapes:
        raise ValueError(f"GGUF file {path} has no token_embd.weight tensor")
    vocab = tensor_shapes["token_embd.weight"][0]
    tokens = meta.get("tokenizer.ggml.tokens")
    if meta.get(f"{arch}.vocab_size") is not None and int(meta[f"{arch}.vocab_size"]) != vocab:
        raise ValueError(f"GGUF file {path}: {arch}.vocab_size {meta[f'{arch}.vocab_size']} != embedding rows {vocab}")
    if tokens is not None and len(tokens) > vocab:
        raise ValueError(f"GGUF file {path}: tokenizer has {len(tokens)} tokens but the embedding only {vocab} rows")

    attention_bias = "blk.0.attn_q.bias" in tensor_shapes
    if arch == "llama" and attention_bias:
        raise ValueError(f"GGUF file {path}: llama with attention biases is not supported")
    if arch == "qwen2" and not attention_bias:
        raise ValueError(f"GGUF file {path}: qwen2 without q/k/v biases (blk.0.attn_q.bias) is not supported")

    rope_scaling = None
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type}
        if meta.get(f"{arch}.rope.scaling.factor") is not None:
            rope_scaling["factor"] = float(meta[f"{arch}.rope.scaling.factor"])
        if meta.get(f"{arch}.rope.scaling.original_context_length") is not None:
            rope_scaling["original_max_position_embeddings"] = int(
                meta[f"{arch}.rope.scaling.original_context_length"])
    if "rope_freqs.weight" in tensor_shapes:  # llama3 scaling stored as per-frequency factors
        raise ValueError(f"GGUF file {path}: RoPE frequency factors (rope_freqs.weight, Llama 3.1+) are not "
                         "supported; load the Hugging Face checkpoint (its rope_scaling is applied)")

    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads) if kv_heads is not None else heads,
        head_dim=head_dim,
        rms_norm_eps=_f32_value(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_f32_value(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_shapes,
        attention_bias=attention_bias,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[],  # filled from the tokenizer (eos + end-of-turn tokens)
        rope_scaling=rope_scaling,
    )


def _f32_value(v) -> float:
    """GGUF stores these as float32: give back the short decimal it came from (9.99999997e-07 -> 1e-06)."""
    return float(str(np.float32(v)))


# --------------------------------------------------------------------------------------------
# tensor names and the llama q/k permutation
# --------------------------------------------------------------------------------------------
_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# tensors llama.cpp writes that have no Hugging Face parameter
_SKIPPED = {"rope_freqs.weight"}


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name for a GGUF tensor name; None for the ones we deliberately skip."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    if gguf_name in _SKIPPED:
        return None
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _PER_LAYER \
            and parts[3] in ("weight", "bias"):
        return f"model.layers.{parts[1]}.{_PER_LAYER[parts[2]]}.{parts[3]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r} (not part of a qwen2/llama decoder)")


def gguf_name(hf: str) -> str:
    """Inverse of `hf_name` (used to write GGUF files in tests/tools)."""
    for g, h in _TOP_LEVEL.items():
        if hf == h:
            return g
    parts = hf.split(".")
    if hf.startswith("model.layers."):
        layer, rest = parts[2], ".".join(parts[3:-1])
        for g, h in _PER_LAYER.items():
            if h == rest:
                return f"blk.{layer}.{g}.{parts[-1]}"
    raise ValueError(f"no GGUF name for {hf!r}")


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (HF -> GGUF)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {tuple(w.shape)} for {n_head} heads")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Exact inverse of `permute_qk` (GGUF -> HF); same as transformers' `_reverse_permute_weights`."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot un-permute {tuple(w.shape)} for {n_head} heads")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def tensor_shape(t) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(list(t.shape)))  # GGUF lists the fastest dim first
