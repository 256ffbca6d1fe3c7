"""Weight-only quantized linears: a decode step reads every weight once, so its time is the
weights' bytes; int4 reads a quarter of bf16's, int8 half.

Formats (``weights=`` at load):
- ``int4``: groups of ``GROUP`` input columns, each w = (q - 8) * scale + zero with q in 0..15
  (gpt-fast's layout, and what torch's CPU op takes). A GGUF Q4_K, Q4_0 or Q4_1 tensor maps onto
  it exactly (``gguf_int4``): only scale and zero are rounded to the model dtype, so
  |w' - w| <= 8 |scale| eps + |zero| eps (eps = 2^-8 for bf16). Any other tensor is requantized
  by min-max per group: |w' - w| <= scale / 2, plus that rounding.
- ``int8``: symmetric per output row, w = q * scale with scale = max|row| / 127, so
  |w' - w| <= scale / 2 (plus the scale's rounding: |w| eps).
- ``bf16`` (or the model dtype): no quantization, the path for checkpoints that are not quantized.

On the CPU the products run on torch's packed ops (``_weight_int4pack_mm_for_cpu``,
``_weight_int8pack_mm``); on CUDA on kernels/weight_only.py's Triton kernel; elsewhere (or on a
torch without the CPU ops) on that kernel's reference, which multiplies by the dequantized weight:
same numbers, no gain.
"""
from __future__ import annotations

import logging
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from gboost.kernels.weight_only import GROUP, dequantize, dequantize_codes, pack_int4, wo_matmul

from .cpu_linear import _FusedLinear

log = logging.getLogger(__name__)

FORMATS = ("bf16", "int8", "int4")
_ROWS_MULTIPLE = 16  # torch's int4 CPU packing takes N in multiples of 16: pad, then slice
MIN_OUT = 16  # smaller linears (a PRM's score head) keep their float weights: no bytes worth saving


class Int4Codes(NamedTuple):
    """w = (codes - 8) * scale + zero, per group of GROUP columns: codes [N, K] uint8 in 0..15,
    scale and zero [N, K / GROUP] float32."""
    codes: torch.Tensor
    scale: torch.Tensor
    zero: torch.Tensor

    def dequantize(self) -> torch.Tensor:
        return dequantize_codes(self.codes, self.scale, self.zero)

    def rows(self, perm: torch.Tensor) -> "Int4Codes":
        return Int4Codes(self.codes[perm], self.scale[perm], self.zero[perm])


def check_format(weights: str) -> str:
    if weights not in FORMATS:
        raise ValueError(f"weights={weights!r}: choose one of {', '.join(FORMATS)}")
    return weights


# -- packing -----------------------------------------------------------------------------------
def quantize_int4(w: torch.Tensor) -> Int4Codes:
    """Min-max (asymmetric) round-to-nearest per group: |dequantize - w| <= scale / 2."""
    n, k = w.shape
    g = w.float().view(n, k // GROUP, GROUP)
    lo, hi = g.amin(-1), g.amax(-1)
    scale = (hi - lo) / 15
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))  # a constant group: q = 0, w = zero - 8*0
    codes = ((g - lo[..., None]) / safe[..., None]).round().clamp(0, 15).to(torch.uint8).view(n, k)
    return Int4Codes(codes, scale, lo + 8 * scale)


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(codes int8 [N, K], scale float32 [N]) with w ~= codes * scale: |error| <= scale / 2."""
    wf = w.float()
    scale = wf.abs().amax(1) / 127
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    return (wf / safe[:, None]).round().clamp(-127, 127).to(torch.int8), scale


def gguf_int4(qtype: str, blocks: np.ndarray, n: int, k: int) -> Int4Codes | None:
    """The exact int4 form of a GGUF tensor's raw ``blocks`` (uint8, row-major [N, K] in HF order),
    or None where its type is not a 4-bit one. Layouts as ggml's (and gguf.quants') dequantizers."""
    b = np.ascontiguousarray(blocks).view(np.uint8)
    if qtype == "Q4_K":  # 256 columns a block: d, dmin (f16), 12 bytes of 6-bit (sc, m) x 8, 128 of nibbles
        b = b.reshape(n * k // 256, 144)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        dmin = b[:, 2:4].copy().view(np.float16).astype(np.float32)
        s = b[:, 4:16].reshape(-1, 3, 4)
        lo6, hi6, mix = s[:, 0], s[:, 1], s[:, 2]
        sc = np.concatenate([lo6 & 0x3F, (mix & 0x0F) | ((lo6 >> 2) & 0x30)], -1).astype(np.float32)
        mn = np.concatenate([hi6 & 0x3F, (mix >> 4) | ((hi6 >> 2) & 0x30)], -1).astype(np.float32)
        qs = b[:, 16:].reshape(-1, 4, 1, 32) >> np.array([0, 4], np.uint8).reshape(1, 1, 2, 1)
        codes = (qs & 0x0F).reshape(-1, 256)
        scale, offset = d * sc, -(dmin * mn)          # w = scale * q + offset, per 32 columns
    elif qtype in ("Q4_0", "Q4_1"):  # 32 columns a block: d (f16) [, m (f16)], 16 bytes of nibbles
        width = 18 if qtype == "Q4_0" else 20
        b = b.reshape(n * k // 32, width)
        d = b[:, 0:2].copy().view(np.float16).astype(np.float32)
        qs = b[:, width - 16:].reshape(-1, 1, 16) >> np.array([0, 4], np.uint8).reshape(1, 2, 1)
        codes = (qs & 0x0F).reshape(-1, 32)
        scale = d
        offset = (-8 * d if qtype == "Q4_0" else b[:, 2:4].copy().view(np.float16).astype(np.float32))
    else:
        return None
    scale = torch.from_numpy(np.ascontiguousarray(scale)).reshape(n, k // GROUP)
    offset = torch.from_numpy(np.ascontiguousarray(offset)).reshape(n, k // GROUP)
    codes = torch.from_numpy(np.ascontiguousarray(codes)).reshape(n, k)
    return Int4Codes(codes, scale, offset + 8 * scale)


# -- layers ------------------------------------------------------------------------------------
class _QuantLinear(_FusedLinear):
    """Shared by the formats: the parts' sizes, a bias, and the first rows of the source weight
    (``fingerprint_rows``): a value head's fingerprint names the checkpoint, not its storage."""
    format = ""

    def _common(self, parts: list[nn.Linear], dtype: torch.dtype):
        w, b = self._fuse(parts)
        self.register_buffer("bias", None if b is None else b.to(dtype), persistent=False)
        self.register_buffer("fingerprint_rows", w[:16].to(torch.bfloat16).clone(), persistent=False)
        self.dtype = dtype
        return w

    def extra_repr(self) -> str:
        return super().extra_repr() + f", format={self.format}"


class Int4Linear(_QuantLinear):
    """y = x W^T + b, W in int4 groups (see the module docstring). ``exact``: per part, the
    Int4Codes it already is (from a GGUF), or None to requantize that part's float weight."""
    format = "int4"

    def __init__(self, parts: list[nn.Linear], exact: list[Int4Codes | None] | None = None,
                 dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = self._common(parts, dtype)
        exact = exact or [None] * len(parts)
        q = [e if e is not None else quantize_int4(p.weight.detach()) for p, e in zip(parts, exact)]
        codes = Int4Codes(*(torch.cat([getattr(c, f) for c in q]) for f in Int4Codes._fields))
        self.exact_parts = sum(e is not None for e in exact)
        n, k = codes.codes.shape
        pad = -n % _ROWS_MULTIPLE
        self.packed = None
        if w.device.type == "cpu" and hasattr(torch, "_weight_int4pack_mm_for_cpu"):
            c = F.pad(codes.codes.to(torch.int32), (0, 0, 0, pad))
            sz = torch.stack([F.pad(codes.scale, (0, 0, 0, pad)), F.pad(codes.zero, (0, 0, 0, pad))], -1)
            self.packed = torch._convert_weight_to_int4pack_for_cpu(c, 1)
            self.scales_zeros = sz.transpose(0, 1).contiguous().to(dtype)   # [K/G, N+pad, 2]
        else:  # a GPU (or a torch without the CPU op): two nibbles a byte, kernels/weight_only.py's layout
            self.register_buffer("qweight", pack_int4(codes.codes).to(w.device), persistent=False)
            self.register_buffer("qscale", codes.scale.to(w.device, dtype), persistent=False)
            self.register_buffer("qzero", codes.zero.to(w.device, dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is None:  # the Triton kernel on CUDA, its dequantizing reference elsewhere
            return wo_matmul(x, self.qweight, self.qscale, self.qzero, self.bias)
        if x.device.type != "cpu":
            return F.linear(x, self.weight.to(x), None if self.bias is None else self.bias.to(x))
        lead = x.shape[:-1]
        y = torch._weight_int4pack_mm_for_cpu(x.reshape(-1, self.in_features).to(self.dtype), self.packed,
                                              GROUP, self.scales_zeros)[:, :self.out_features]
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        """W as the layer computes with it (for inspection and tests, not the hot path): the packed
        op applied to the identity, or the codes dequantized with the rounded scale and zero."""
        if self.packed is not None:
            eye = torch.eye(self.in_features, dtype=self.dtype)
            return torch._weight_int4pack_mm_for_cpu(eye, self.packed, GROUP, self.scales_zeros)[:, :self.out_features].T
        return dequantize(self.qweight, self.qscale, self.qzero).to(self.dtype)


#: torch's packed int8 CPU matmul (absent from some builds): looked up once, not per forward
_INT8PACK_MM = getattr(torch, "_weight_int8pack_mm", None)


class Int8Linear(_QuantLinear):
    """y = x W^T + b, W in int8 per output row (see the module docstring)."""
    format = "int8"

    def __init__(self, parts: list[nn.Linear], dtype: torch.dtype = torch.bfloat16):
        super().__init__()
        w = self._common(parts, dtype)
        codes, scale = quantize_int8(w)
        self.register_buffer("codes", codes, persistent=False)
        self.register_buffer("scale", scale.to(dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or _INT8PACK_MM is None:
            return wo_matmul(x, self.codes, self.scale, None, self.bias)  # Triton on CUDA
        lead = x.shape[:-1]
        y = _INT8PACK_MM(x.reshape(-1, self.in_features).to(self.dtype), self.codes, self.scale)
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features).to(x.dtype)

    @property
    def weight(self) -> torch.Tensor:
        return (self.codes.float() * self.scale.float()[:, None]).to(self.dtype)


# -- the model pass ----------------------------------------------------------------------------
def quantize_linears(model: nn.Module, weights: str, exact: dict[str, Int4Codes] | None = None) -> dict[str, int]:
    """Replace the nn.Linear layers of ``model`` by ``weights``-format layers, in place, fusing each
    module's ``FUSED`` groups as cpu_linear.py does. ``exact``: int4 codes by HF weight name
    (``model.layers.0.mlp.down_proj.weight``), taken as they are. Returns counts: layers, and
    exact and requantized parts (int4)."""
    check_format(weights)
    counts = {"layers": 0, "exact_parts": 0, "requantized_parts": 0}
    if weights == "bf16":
        return counts
    exact = exact or {}
    dtype = next(model.parameters()).dtype

    def make(prefix: str, names: list[str], parts: list[nn.Linear]) -> nn.Module:
        if weights == "int8":
            layer = Int8Linear(parts, dtype)
        else:
            layer = Int4Linear(parts, [exact.get(f"{prefix}{n}.weight") for n in names], dtype)
            counts["exact_parts"] += layer.exact_parts
        counts["requantized_parts"] += len(parts) - (layer.exact_parts if weights == "int4" else 0)
        counts["layers"] += 1
        return layer

    for prefix, parent in list(model.named_modules()):
        prefix = f"{prefix}." if prefix else ""
        for fused, names in getattr(parent, "FUSED", {}).items():
            parts = [getattr(parent, k, None) for k in names]
            if all(type(p) is nn.Linear and p.out_features >= MIN_OUT for p in parts):
                setattr(parent, fused, make(prefix, list(names), parts))
                for k in names:
                    delattr(parent, k)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and child.out_features >= MIN_OUT:
                setattr(parent, name, make(prefix, [name], [child]))
    model.weight_format = weights
    return counts


def weight_format(model: nn.Module) -> str:
    """The format ``model``'s linears run in: int4, int8, or its float dtype's name."""
    fmt = getattr(model, "weight_format", None)
    if fmt:
        return fmt
    p = next(model.parameters(), None)
    return "bf16" if p is None or p.dtype == torch.bfloat16 else str(p.dtype).removeprefix("torch.")
