"""Linear layers for bf16 weights on CPU: oneDNN-prepacked where the CPU has bf16 kernels,
upcast to fp32 per call for many rows where it has not.

`F.linear` on a CPU bf16 weight reorders the weight into oneDNN's blocked layout on every call;
at decode's few rows that reorder is a large share of the matmul. Packing once at load time
(what IPEX and torch.compile's CPU path do) keeps the same fp32-accumulated oneDNN kernel and
skips the reorder. Only bf16 is packed: for fp32 at one row the plain path was as fast or faster
on the CPUs measured (benchmarks/RESULTS.md).

On an AVX2-only CPU a bf16 matmul runs at a fixed ~20 GFLOP/s however many rows it has, while
fp32 reaches 7x that at a prefill's hundreds of rows; copying the bf16 weight into an fp32 scratch
costs about as much as 3 rows. So there, from `UPCAST_MIN_ROWS` rows on, the weight is upcast per
call (the same fp32-accumulated product), and fewer rows keep the bf16 path, which reads half the
bytes.
"""
from __future__ import annotations

import os
import threading

import torch
import torch.nn.functional as F
from torch import nn

#: set to 0 to keep plain nn.Linear layers (to compare, or to rule the packed path out)
ENV = "GBOOST_CPU_PACKED_LINEAR"


#: rows from which an UpcastLinear computes in fp32 (measured break-even: 8-16 rows, RESULTS.md)
UPCAST_MIN_ROWS = 16
#: fp32 elements of one thread's weight scratch; larger weights are upcast in row chunks
SCRATCH_ELEMS = 1 << 24


def can_pack(weight: torch.Tensor) -> bool:
    """True where oneDNN can prepack this weight: a bf16 CPU tensor on a CPU whose oneDNN
    has bf16 kernels (AVX-512 with bf16 or AMX; on AVX2-only CPUs the plain path stays)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2
            and os.environ.get(ENV, "1") != "0" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def can_upcast(weight: torch.Tensor) -> bool:
    """True where a bf16 CPU weight cannot be packed (no oneDNN bf16 kernels: AVX2-only CPUs),
    so many-row products are faster upcast to fp32 (UpcastLinear)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2
            and os.environ.get(ENV, "1") != "0" and not can_pack(weight))


class _FusedLinear(nn.Module):
    """One layer from the row-concatenation of `parts` (several projections of one input in one
    matmul: their outputs side by side, split by the caller)."""

    def _fuse(self, parts: list[nn.Linear]) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(W, b) of the concatenated parts; one part's weight is shared, not copied (a tied
        lm_head keeps the embedding's storage); a part without bias contributes zeros."""
        self.in_features, self.out_features = parts[0].in_features, sum(p.out_features for p in parts)
        self.parts_out = [p.out_features for p in parts]  # where each part's rows are (LoRA on one part)
        w = torch.cat([p.weight.detach() for p in parts]) if len(parts) > 1 else parts[0].weight.detach()
        biases = [p.bias for p in parts]
        b = (None if all(b is None for b in biases) else
             torch.cat([b.detach() if b is not None else w.new_zeros(p.out_features) for b, p in zip(biases, parts)]))
        return w, b

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class PackedLinear(_FusedLinear):
    """y = x W^T + b with W held in oneDNN's blocked layout (an opaque tensor, not a parameter:
    it cannot be moved, cast or saved, so it is made last, from the loaded weights)."""

    def __init__(self, parts: list[nn.Linear], batch_hint: int = 1):
        super().__init__()
        w, self.bias = self._fuse(parts)
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu":
            raise TypeError(f"PackedLinear takes bf16 CPU rows, got {x.dtype} on {x.device}")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @property
    def weight(self) -> torch.Tensor:
        """A dense copy of W (for fingerprints and inspection; not for the hot path)."""
        return self.packed.to_dense()


class UpcastLinear(_FusedLinear):
    """y = x W^T + b with W kept in bf16: below UPCAST_MIN_ROWS rows the bf16 product, from there
    on W copied into a per-thread fp32 scratch (in row chunks of SCRATCH_ELEMS) and multiplied in
    fp32; both accumulate in fp32, and y is rounded to bf16 either way."""

    def __init__(self, parts: list[nn.Linear]):
        super().__init__()
        w, b = self._fuse(parts)
        self.register_buffer("weight", w, persistent=False)
        self.register_buffer("bias", b, persistent=False)
        self.register_buffer("bias32", None if b is None else b.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() < UPCAST_MIN_ROWS * self.in_features or x.dtype != torch.bfloat16:
            return F.linear(x, self.weight, self.bias)
        xf = x.float()
        step = max(1, SCRATCH_ELEMS // self.in_features)
        if step >= self.out_features:
            return F.linear(xf, _scratch(self.weight), self.bias32).to(x.dtype)
        y = x.new_empty(*x.shape[:-1], self.out_features)
        for lo in range(0, self.out_features, step):
            hi = min(lo + step, self.out_features)
            b = None if self.bias32 is None else self.bias32[lo:hi]
            y[..., lo:hi] = F.linear(xf, _scratch(self.weight[lo:hi]), b)
        return y


_SCRATCH = threading.local()


def _scratch(w: torch.Tensor) -> torch.Tensor:
    """w copied into this thread's fp32 scratch (grown as needed; a fresh fp32 tensor per call
    would page-fault its whole size in, ten times the cost of the copy)."""
    buf = getattr(_SCRATCH, "buf", None)
    if buf is None or buf.numel() < w.numel():
        buf = _SCRATCH.buf = torch.empty(max(w.numel(), SCRATCH_ELEMS // 4), dtype=torch.float32)
    return buf[:w.numel()].view(w.shape).copy_(w)


def _cpu_linear_kind(weight: torch.Tensor):
    return PackedLinear if can_pack(weight) else UpcastLinear if can_upcast(weight) else None


def pack_linears(model: nn.Module) -> int:
    """Replace the nn.Linear layers of `model` whose bf16 CPU weights `can_pack` by PackedLinear,
    or else, where they `can_upcast`, by UpcastLinear (in place); return how many such layers
    there are now. A module's `FUSED` groups ({"qkv_proj": ("q_proj", "k_proj", "v_proj")}) become
    one layer under the new name: one matmul streams the weights once, with one call's overhead.
    A tied lm_head gets a packed copy, or an upcast view of the embedding's weight."""
    n = 0
    for parent in list(model.modules()):
        for fused, names in getattr(parent, "FUSED", {}).items():
            parts = [getattr(parent, k, None) for k in names]
            if all(type(p) is nn.Linear for p in parts):
                kinds = {_cpu_linear_kind(p.weight) for p in parts}
                if len(kinds) == 1 and (kind := kinds.pop()) is not None:
                    setattr(parent, fused, kind(parts))
                    for k in names:
                        delattr(parent, k)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and (kind := _cpu_linear_kind(child.weight)) is not None:
                setattr(parent, name, kind([child]))
            n += isinstance(getattr(parent, name), (PackedLinear, UpcastLinear))
    return n
