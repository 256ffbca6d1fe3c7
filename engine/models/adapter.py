"""LoRA adapters as peft saves them (``adapter_config.json`` + ``adapter_model.safetensors``), merged
into a checkpoint's weights at load: ``W + (alpha / r) * B @ A`` per target module (``alpha / sqrt(r)``
with rsLoRA), in float32, then cast to the checkpoint's dtype.

Only safetensors is read (never ``adapter_model.bin``: pickle). What peft can save but this
does not apply -- DoRA, trained biases, modules saved whole, embedding LoRA, per-module rank or
alpha patterns -- is refused with a one-line error naming the file, never silently dropped.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

__all__ = ["AdapterError", "LoraAdapter", "adapter_dir", "read_adapter", "merge_adapter", "shipped_adapters"]

CONFIG, WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
#: adapters that ship with the package, one peft directory each: `--slm-adapter NAME`
SHIPPED = Path(__file__).resolve().parent.parent / "adapters"


def shipped_adapters() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / CONFIG).is_file()) if SHIPPED.is_dir() else []


def adapter_dir(spec: str | Path) -> Path:
    """The directory an adapter is read from: ``spec`` when it exists, else the shipped adapter of
    that name (a directory the user names always wins over a shipped name)."""
    d = Path(spec)
    if not d.exists() and str(spec) in shipped_adapters():
        return SHIPPED / str(spec)
    return d
_KEY = re.compile(r"^(?:base_model\.model\.)?(?P<module>.+)\.lora_(?P<ab>[AB])(?:\.[^.]+)?\.weight$")


class AdapterError(ValueError):
    """A bad, unsupported or mismatched adapter; the message names the file."""


@dataclass
class LoraAdapter:
    path: Path
    rank: int
    scaling: float
    pairs: dict[str, tuple[torch.Tensor, torch.Tensor]]   # HF module name -> (A [r, in], B [out, r])
    base_model: str | None = None


def read_adapter(path: str | Path) -> LoraAdapter:
    d = adapter_dir(path)
    cfg_path = d / CONFIG
    if not d.is_dir():
        raise AdapterError(f"{d}: no adapter directory there (want {CONFIG} and {WEIGHTS}, as peft saves them; "
                           f"shipped: {', '.join(shipped_adapters()) or 'none'})")
    if not cfg_path.is_file():
        raise AdapterError(f"{cfg_path}: missing (a peft LoRA adapter directory has {CONFIG} and {WEIGHTS})")
    try:
        cfg = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise AdapterError(f"{cfg_path}: not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise AdapterError(f"{cfg_path}: must be a JSON object")
    _refuse_unsupported(cfg_path, cfg)
    w_path = d / WEIGHTS
    if not w_path.is_file():
        pickled = " (adapter_model.bin is a pickle: not loaded; re-save with safe_serialization=True)" \
            if (d / "adapter_model.bin").exists() else ""
        raise AdapterError(f"{w_path}: missing{pickled}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(w_path))
    except (SafetensorError, OSError, ValueError) as e:
        raise AdapterError(f"{w_path}: not a readable safetensors file ({e})") from None
    halves: dict[str, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        m = _KEY.match(key)
        if m is None:
            raise AdapterError(f"{w_path}: tensor {key!r} is not a LoRA A/B weight (embedding LoRA, biases and "
                               "modules saved whole are not supported)")
        halves.setdefault(m["module"], {})[m["ab"]] = t
    r, alpha = int(cfg.get("r", 0)), float(cfg.get("lora_alpha", 0))
    if r < 1 or alpha <= 0:
        raise AdapterError(f"{cfg_path}: r={cfg.get('r')!r} and lora_alpha={cfg.get('lora_alpha')!r} must be > 0")
    pairs = {}
    for module, ab in sorted(halves.items()):
        if set(ab) != {"A", "B"}:
            raise AdapterError(f"{w_path}: module {module!r} has lora_{''.join(sorted(ab))} without its pair")
        a, b = ab["A"], ab["B"]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != r or b.shape[1] != r:
            raise AdapterError(f"{w_path}: module {module!r} has A {tuple(a.shape)} and B {tuple(b.shape)}, "
                               f"not rank r={r} as {CONFIG} says")
        pairs[module] = (a, b)
    if not pairs:
        raise AdapterError(f"{w_path}: holds no LoRA weights")
    scaling = alpha / math.sqrt(r) if cfg.get("use_rslora") else alpha / r
    return LoraAdapter(d, r, scaling, pairs, cfg.get("base_model_name_or_path"))


def _refuse_unsupported(cfg_path: Path, cfg: dict) -> None:
    if cfg.get("peft_type", "LORA") != "LORA":
        raise AdapterError(f"{cfg_path}: peft_type={cfg.get('peft_type')!r}: only LoRA adapters are supported")
    refused = [("use_dora", "DoRA"), ("modules_to_save", "modules saved whole"), ("rank_pattern", "per-module ranks"),
               ("alpha_pattern", "per-module alphas"), ("fan_in_fan_out", "fan_in_fan_out (Conv1D) layers"),
               ("layers_to_transform", "layers_to_transform")]
    for key, what in refused:
        if cfg.get(key):
            raise AdapterError(f"{cfg_path}: {key}={cfg[key]!r}: {what} not supported")
    if cfg.get("bias", "none") != "none":
        raise AdapterError(f"{cfg_path}: bias={cfg['bias']!r}: trained biases not supported (bias='none')")


def merge_adapter(state_dict: dict[str, torch.Tensor], adapter: LoraAdapter) -> dict[str, torch.Tensor]:
    """A new state dict with the adapter merged; ``state_dict`` itself is left unchanged (its
    tensors may be read-only views of a file). Every check runs before any tensor is built."""
    targets = {}
    for module, (a, b) in adapter.pairs.items():
        name = f"{module}.weight"
        w = state_dict.get(name)
        if w is None:
            raise AdapterError(f"{adapter.path / WEIGHTS}: module {module!r} is not in this model (an adapter "
                               f"for another base model{f': {adapter.base_model}' if adapter.base_model else ''}?)")
        if (b.shape[0], a.shape[1]) != tuple(w.shape):
            raise AdapterError(f"{adapter.path / WEIGHTS}: module {module!r} is {b.shape[0]}x{a.shape[1]}, the "
                               f"model's weight is {w.shape[0]}x{w.shape[1]} (an adapter for another base model?)")
        targets[name] = (w, a, b)
    merged = dict(state_dict)
    for name, (w, a, b) in targets.items():
        delta = (b.float() @ a.float()) * adapter.scaling
        merged[name] = (w.float() + delta).to(w.dtype)
    return merged
