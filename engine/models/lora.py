"""LoRA adapters kept apart from the weights they tune: one resident copy of a base model runs
its own rows and the rows of any number of adapters in the same forward (S-LoRA / Punica's
batched LoRA, in torch).

Each targeted linear becomes a ``LoraLinear``: ``y = base(x)``, then for the rows of each adapter
``y[rows] += (x[rows] A^T) (s B)^T``. A fused layer (qkv_proj, gate_up_proj: cpu_linear.py)
keeps one stacked ``A`` and one block-shaped ``B`` per adapter, zero where a part is not
targeted, so one pair of small matmuls serves every part. Which rows belong to which adapter is
batch metadata (``Context.lora_rows``), set by the runner from each sequence's ``adapter``.

The delta is computed in fp32 and added to the base output in its dtype: in fp32 it equals the
merged weights up to summation order (models/adapter.py merges instead, the fast path for one).
"""
from __future__ import annotations

import torch
from torch import nn

from gboost.context import get_context

from .adapter import WEIGHTS, AdapterError, LoraAdapter

__all__ = ["LoraLinear", "install_adapter", "adapters_of", "weight_rows"]


class LoraLinear(nn.Module):
    """A linear layer (plain, packed or fused) with adapters applied to the rows that ask for them.
    ``parts``: the projections its output holds side by side, as (HF leaf name, out features)."""

    def __init__(self, base: nn.Module, parts: list[tuple[str, int]]):
        super().__init__()
        self.base = base
        self.parts = parts
        self.in_features = base.in_features if hasattr(base, "in_features") else base.weight.shape[1]
        # adapter name -> (A [R, in] fp32, Bt [R, out] fp32 with the scaling folded in); a plain
        # dict, not buffers: the model's state dict stays the base checkpoint's
        self.adapters: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @property
    def bias(self):
        return getattr(self.base, "bias", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for name, rows in get_context().lora_rows:
            a, bt = self.adapters.get(name, (None, None))
            if a is None:  # this adapter does not target this layer
                continue
            xs = x.float() if rows is None else x[rows].float()
            delta = (xs @ a.T) @ bt
            if rows is None:
                y = (y.float() + delta).to(y.dtype)
            else:
                y[rows] = (y[rows].float() + delta).to(y.dtype)
        return y


def _target(model: nn.Module, module: str) -> tuple[nn.Module, str, list[tuple[str, int]], int]:
    """Where the HF module ``module`` lives in ``model`` now: (parent, attribute, the attribute's
    parts, the part's index). Raises KeyError where it is not there."""
    parent_path, _, leaf = module.rpartition(".")
    parent = model.get_submodule(parent_path) if parent_path else model
    if leaf in dict(parent.named_children()):
        child = getattr(parent, leaf)
        if isinstance(child, LoraLinear):
            return parent, leaf, child.parts, 0
        out = child.out_features if hasattr(child, "out_features") else child.weight.shape[0]
        return parent, leaf, [(leaf, out)], 0
    for fused, names in getattr(parent, "FUSED", {}).items():
        child = getattr(parent, fused, None)
        if leaf in names and child is not None:
            parts = child.parts if isinstance(child, LoraLinear) else list(zip(names, child.parts_out))
            return parent, fused, parts, names.index(leaf)
    raise KeyError(module)


def install_adapter(model: nn.Module, name: str, adapter: LoraAdapter) -> None:
    """Give ``model`` the adapter ``name`` (unmerged). Every check runs before any layer changes, so
    a bad adapter leaves the model as it was."""
    where = adapter.path / WEIGHTS
    if name in adapters_of(model):
        raise AdapterError(f"{where}: an adapter named {name!r} is already loaded on this model")
    plan: dict[tuple[int, str], dict] = {}
    for module, (a, b) in adapter.pairs.items():
        if module.split(".")[-1] in ("lm_head", "embed_tokens"):
            raise AdapterError(f"{where}: module {module!r}: LoRA on the {module.split('.')[-1]} is merged at "
                               "load only (load this adapter merged)")
        try:
            parent, attr, parts, i = _target(model, module)
        except (KeyError, AttributeError):
            raise AdapterError(f"{where}: module {module!r} is not in this model (an adapter for another base "
                               f"model{f': {adapter.base_model}' if adapter.base_model else ''}?)") from None
        layer = getattr(parent, attr)
        n_in = layer.in_features if hasattr(layer, "in_features") else layer.weight.shape[1]
        if (b.shape[0], a.shape[1]) != (parts[i][1], n_in):
            raise AdapterError(f"{where}: module {module!r} is {b.shape[0]}x{a.shape[1]}, the model's weight is "
                               f"{parts[i][1]}x{n_in} (an adapter for another base model?)")
        plan.setdefault((id(parent), attr), {"parent": parent, "attr": attr, "parts": parts, "pairs": {}})
        plan[(id(parent), attr)]["pairs"][i] = (a, b)
    for p in plan.values():
        layer = getattr(p["parent"], p["attr"])
        if not isinstance(layer, LoraLinear):
            layer = LoraLinear(layer, p["parts"])
            setattr(p["parent"], p["attr"], layer)
        layer.adapters[name] = _stack(p["parts"], p["pairs"], adapter.scaling, _device(layer.base))
    model.lora_adapters = adapters_of(model) | {name}


def _stack(parts, pairs, scaling: float, device) -> tuple[torch.Tensor, torch.Tensor]:
    """One (A, Bt) for a layer whose output holds ``parts``: the targeted parts' A stacked, and
    Bt with each part's B^T in its own rows and columns (zeros elsewhere)."""
    offsets = [0]
    for _, n in parts:
        offsets.append(offsets[-1] + n)
    order = sorted(pairs)
    a = torch.cat([pairs[i][0].float() for i in order]).to(device)
    bt = torch.zeros(a.shape[0], offsets[-1], dtype=torch.float32, device=device)
    r0 = 0
    for i in order:
        b = pairs[i][1].float()
        bt[r0:r0 + b.shape[1], offsets[i]:offsets[i + 1]] = b.T * scaling
        r0 += b.shape[1]
    return a, bt


def _device(layer: nn.Module) -> torch.device:
    """Where a layer's tensors are (a quantized layer's dense weight is costly to make)."""
    t = next(layer.buffers(), None)
    return t.device if t is not None else layer.weight.device


def adapters_of(model: nn.Module) -> frozenset[str]:
    """The adapters installed on ``model``."""
    return frozenset(getattr(model, "lora_adapters", frozenset()))


def weight_rows(layer: nn.Module, n: int, adapter: str | None = None) -> torch.Tensor:
    """The first ``n`` rows of ``layer``'s weight as ``adapter`` tunes it (W + s B A, in fp32 when
    tuned): what the merged weights would hold, for fingerprints (not for the hot path). A quantized
    layer gives its source weight's rows (models/quant.py: the fingerprint names the checkpoint)."""
    base = layer.base if isinstance(layer, LoraLinear) else layer
    rows = getattr(base, "fingerprint_rows", None)
    w = rows[:n] if rows is not None and n <= rows.shape[0] else layer.weight[:n]
    if not isinstance(layer, LoraLinear) or adapter not in layer.adapters:
        return w
    a, bt = layer.adapters[adapter]
    return w.float() + (bt[:, :n].T @ a).to(w.device)
