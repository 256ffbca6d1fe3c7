"""Shared helpers for the kernels package: dispatch policy, launches (optionally recorded), utilities."""
import contextlib
import inspect
import os
import threading

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


def memoized(memo: dict | None, key, make):
    """make() once per memo, a dict that lives for one forward (batch-derived values every layer
    would otherwise rebuild); without a memo, on every call."""
    if memo is None:
        return make()
    if key not in memo:
        memo[key] = make()
    return memo[key]


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


# ------------------------------------------------------------------------------ launch recording

_RECORDERS: list[dict] = []
_LOCK = threading.Lock()
_DTYPES = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16", torch.int64: "i64",
           torch.int32: "i32", torch.int16: "i16", torch.int8: "i8", torch.uint8: "u8", torch.bool: "i1"}


def launch(kernel, grid, *args, compiled: dict | None = None, **kwargs):
    """kernel[grid](*args, **kwargs), noted by every open `record_launches()`. `compiled` gives the
    constexprs a compiled launch would use where the interpreter uses others (bf16 upcasts)."""
    if _RECORDERS:
        _record(kernel, args, dict(kwargs, **(compiled or {})))
    return kernel[grid](*args, **kwargs)


def _arg_type(v):
    if isinstance(v, torch.Tensor):
        return "*" + _DTYPES[v.dtype]
    if isinstance(v, bool):
        return "i1"
    if isinstance(v, int):
        return "i32" if -2 ** 31 <= v < 2 ** 31 else "i64"
    if isinstance(v, float):
        return "fp32"
    raise TypeError(f"cannot record an argument of type {type(v).__name__}")


def _record(kernel, args, kwargs):
    fn = kernel.fn
    params = inspect.signature(fn).parameters
    names = list(params)
    bound = dict(zip(names, args), **kwargs)
    signature, constexprs = {}, {}
    for n in names:
        if getattr(params[n].annotation, "__name__", str(params[n].annotation)).endswith("constexpr"):
            v = bound.get(n, params[n].default)
            constexprs[n] = v.value if hasattr(v, "value") else v
        else:
            signature[n] = _arg_type(bound[n])
    options = {k: kwargs[k] for k in ("num_warps", "num_stages", "enable_fp_fusion") if k in kwargs}
    key = (f"{fn.__module__}.{fn.__name__}", tuple(signature.items()), tuple(sorted(constexprs.items())),
           tuple(sorted(options.items())))
    with _LOCK:
        for rec in _RECORDERS:
            rec.setdefault(key, {"kernel": key[0], "signature": signature, "constexprs": constexprs,
                                 "options": options})


@contextlib.contextmanager
def record_launches():
    """Collect the distinct launches (kernel, argument types, constexprs, options) made while open:
    `with record_launches() as seen: ...; list(seen.values())` (tests/kernels/record_launches.py)."""
    rec: dict = {}
    with _LOCK:
        _RECORDERS.append(rec)
    try:
        yield rec
    finally:
        with _LOCK:
            _RECORDERS.remove(rec)
