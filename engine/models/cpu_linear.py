"""Linear layers with oneDNN-prepacked weights, for bf16 decode on CPU.

`F.linear` on a CPU bf16 weight reorders the weight into oneDNN's blocked layout on every call;
at decode's few rows that reorder is a large share of the matmul. Packing once at load time
(what IPEX and torch.compile's CPU path do) keeps the same fp32-accumulated oneDNN kernel and
skips the reorder. Only bf16 is packed: for fp32 at one row the plain path was as fast or faster
on the CPUs measured (benchmarks/RESULTS.md).
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

#: set to 0 to keep plain nn.Linear layers (to compare, or to rule the packed path out)
ENV = "GBOOST_CPU_PACKED_LINEAR"


def can_pack(weight: torch.Tensor) -> bool:
    """True where oneDNN can prepack this weight: a bf16 CPU tensor on a CPU whose oneDNN
    has bf16 kernels (AVX-512 with bf16 or AMX; on AVX2-only CPUs the plain path stays)."""
    return (weight.device.type == "cpu" and weight.dtype == torch.bfloat16 and weight.dim() == 2
            and os.environ.get(ENV, "1") != "0" and torch.backends.mkldnn.is_available()
            and torch.ops.mkldnn._is_mkldnn_bf16_supported())


class PackedLinear(nn.Module):
    """y = x W^T + b with W held in oneDNN's blocked layout (an opaque tensor, not a parameter:
    it cannot be moved, cast or saved, so it is made last, from the loaded weights)."""

    def __init__(self, parts: list[nn.Linear], batch_hint: int = 1):
        """One layer from the row-concatenation of `parts` (several projections of one input in
        one matmul: their outputs side by side, split by the caller)."""
        super().__init__()
        self.in_features, self.out_features = parts[0].in_features, sum(p.out_features for p in parts)
        w = torch.cat([p.weight.detach() for p in parts]) if len(parts) > 1 else parts[0].weight.detach()
        self.packed = torch.ops.mkldnn._reorder_linear_weight(w, batch_hint)
        biases = [p.bias for p in parts]
        self.bias = (None if all(b is None for b in biases) else
                     torch.cat([b.detach() if b is not None else w.new_zeros(p.out_features)
                                for b, p in zip(biases, parts)]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.bfloat16 or x.device.type != "cpu":
            raise TypeError(f"PackedLinear takes bf16 CPU rows, got {x.dtype} on {x.device}")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")

    @property
    def weight(self) -> torch.Tensor:
        """A dense copy of W (for fingerprints and inspection; not for the hot path)."""
        return self.packed.to_dense()

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def pack_linears(model: nn.Module) -> int:
    """Replace the nn.Linear layers of `model` whose weights `can_pack` by PackedLinear (in place);
    return how many packed layers there are now. A module's `FUSED` groups ({"qkv_proj": ("q_proj",
    "k_proj", "v_proj")}) become one layer under the new name: one matmul streams the weights once,
    with one call's overhead. A tied lm_head gets a packed copy; the embedding keeps its own."""
    n = 0
    for parent in list(model.modules()):
        for fused, names in getattr(parent, "FUSED", {}).items():
            parts = [getattr(parent, k, None) for k in names]
            if all(type(p) is nn.Linear and can_pack(p.weight) for p in parts):
                setattr(parent, fused, PackedLinear(parts))
                for k in names:
                    delattr(parent, k)
        for name, child in list(parent.named_children()):
            if type(child) is nn.Linear and can_pack(child.weight):
                setattr(parent, name, PackedLinear([child]))
            n += isinstance(getattr(parent, name), PackedLinear)
    return n
