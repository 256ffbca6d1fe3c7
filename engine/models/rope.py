"""RoPE frequency rules: plain, ``linear``, ``llama3`` and ``yarn`` scaling (the HF conventions).

``rope_inv_freq(head_dim, theta, rope_scaling, max_position_embeddings)`` returns the inverse
frequencies and the factor that multiplies cos/sin (1 except for YaRN).  Position-dependent
rules (``dynamic`` NTK, ``longrope``) would change the cache's past keys as a sequence grows,
which a paged KV cache shared by forks cannot honour: they are refused by name.
"""
from __future__ import annotations

import math
from typing import Any

import torch

__all__ = ["rope_inv_freq", "check_rope_scaling", "SUPPORTED_ROPE_TYPES"]

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")
_NEEDS = {"linear": ("factor",), "llama3": ("factor", "low_freq_factor", "high_freq_factor",
                                            "original_max_position_embeddings"),
          "yarn": ()}


def rope_type(scaling: dict[str, Any] | None) -> str:
    if not scaling:
        return "default"
    kind = str(scaling.get("rope_type") or scaling.get("type") or "default")
    return "default" if kind == "none" else kind  # GGUF writes "none" for plain RoPE


def check_rope_scaling(scaling: dict[str, Any] | None) -> None:
    """Raise ValueError, naming the problem, for a rope_scaling this engine would mis-run."""
    kind = rope_type(scaling)
    if kind not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_scaling type {kind!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED_ROPE_TYPES)})")
    missing = [k for k in _NEEDS.get(kind, ()) if scaling.get(k) is None]
    if missing:
        raise ValueError(f"rope_scaling type {kind!r} needs {', '.join(missing)}")
    if kind != "default" and scaling.get("factor") is not None and float(scaling["factor"]) <= 0:
        raise ValueError(f"rope_scaling factor must be > 0, got {scaling['factor']}")


def rope_inv_freq(head_dim: int, theta: float, scaling: dict[str, Any] | None = None,
                  max_position_embeddings: int | None = None) -> tuple[torch.Tensor, float]:
    check_rope_scaling(scaling)
    kind = rope_type(scaling)
    exps = torch.arange(0, head_dim, 2, dtype=torch.int64).float() / head_dim
    inv = 1.0 / (theta ** exps)
    if kind == "default":
        return inv, 1.0
    factor = scaling.get("factor")
    if factor is None:  # yarn: the extension the config declares (HF's rule)
        orig = scaling.get("original_max_position_embeddings")
        if not orig or not max_position_embeddings:
            raise ValueError("rope_scaling type 'yarn' needs factor or original_max_position_embeddings")
        factor = max_position_embeddings / orig
    factor = float(factor)
    if kind == "linear":
        return inv / factor, 1.0
    if kind == "llama3":
        return _llama3(inv, factor, scaling), 1.0
    return _yarn(head_dim, theta, factor, scaling, max_position_embeddings)


def _llama3(inv: torch.Tensor, factor: float, s: dict[str, Any]) -> torch.Tensor:
    # long wavelengths are interpolated by `factor`, short ones kept, the band between blended
    old = s["original_max_position_embeddings"]
    low_wl, high_wl = old / s["low_freq_factor"], old / s["high_freq_factor"]
    wavelen = 2 * math.pi / inv
    out = torch.where(wavelen > low_wl, inv / factor, inv)
    smooth = (old / wavelen - s["low_freq_factor"]) / (s["high_freq_factor"] - s["low_freq_factor"])
    blended = (1 - smooth) * out / factor + smooth * out
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return torch.where(medium, blended, out)


def _yarn(dim: int, base: float, factor: float, s: dict[str, Any],
          max_pos: int | None) -> tuple[torch.Tensor, float]:
    orig = s.get("original_max_position_embeddings") or max_pos
    if orig is None:
        raise ValueError("rope_scaling type 'yarn' needs original_max_position_embeddings")

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    att = s.get("attention_factor")
    if att is None:
        m, m_all = s.get("mscale"), s.get("mscale_all_dim")
        att = mscale(factor, m) / mscale(factor, m_all) if (m and m_all) else mscale(factor)
    beta_fast, beta_slow = s.get("beta_fast") or 32, s.get("beta_slow") or 1

    def corr_dim(rot: float) -> float:  # the dimension that turns `rot` times over the original context
        return dim * math.log(orig / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr_dim(beta_fast), corr_dim(beta_slow)
    if s.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    pos = base ** (torch.arange(0, dim, 2).float() / dim)
    extra = 1 - ramp  # 1: keep the original frequency (high-frequency dims), 0: interpolate
    inv = (1.0 / (factor * pos)) * (1 - extra) + (1.0 / pos) * extra
    return inv, float(att)
