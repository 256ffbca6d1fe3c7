"""Shared helpers for the kernels package: dispatch policy and small utilities."""
import os

import torch


def interpreting() -> bool:
    # Triton's CPU interpreter: set before triton is imported (tests/conftest.py does it).
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def use_triton(*tensors: torch.Tensor) -> bool:
    """Triton when any tensor lives on CUDA, or when forced (tests run the interpreter on CPU)."""
    if os.environ.get("GBOOST_FORCE_TRITON", "0") == "1":
        return True
    return any(t is not None and t.is_cuda for t in tensors)


def same_device(**tensors) -> None:
    """Raise ValueError naming the first tensor argument that is not on the first one's device.
    A Triton launch would refuse (or misread) a CPU pointer among CUDA ones, and the references
    would fail deep inside torch; this says which argument, at the call."""
    first = None
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            continue
        if first is None:
            first = (name, t.device)
        elif t.device != first[1]:
            raise ValueError(f"{name} is on {t.device} but {first[0]} is on {first[1]}: "
                             "a kernel's tensor arguments must share one device")


def next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def launch_opts(device: torch.device) -> dict:
    # Bit-reproducible sampling needs IEEE mul/add without FMA contraction; the interpreter drops the kwarg anyway.
    return {"enable_fp_fusion": False} if device.type == "cuda" else {}


def row_param(x, B: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Scalar or per-row value -> contiguous [B] tensor of `dtype` on `device`."""
    if isinstance(x, torch.Tensor):
        x = x.to(device=device, dtype=dtype)
        if x.dim() == 0:
            x = x.expand(B)
        assert x.shape == (B,), f"per-row parameter must be [B]={B}, got {tuple(x.shape)}"
        return x.contiguous()
    return torch.full((B,), x, dtype=dtype, device=device)

