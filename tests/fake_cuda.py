"""A stand-in CUDA device for tests on machines without one: device placement of the GPU path, checked.

Inside `fake_cuda()`, tensors made for (or moved to) "cuda" are `FakeCudaTensor`s: their `.device` is
cuda:0 and `.is_cuda` is True, their data lives on the CPU, and every op on them enforces CUDA's rule:
all tensor operands on one device, except 0-dim CPU tensors (scalars). So code that would hand a
CPU tensor to a GPU op, or draw CPU noise from a CUDA generator, fails here as it would on a GPU.
`torch.Generator(device="cuda")` gives a CPU generator that reports cuda:0 and refuses to fill CPU
tensors. Pinned memory needs CUDA: `pin_memory` requests are recorded (`FakeCuda.pinned`) and ignored.

Triton cannot read these tensors: tests patch the launchers they reach (`launches` below) with
`checked_launch`, which asserts that every tensor argument is on one device and runs the function on
the CPU copies.
"""
from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass, field

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_map

FAKE = torch.device("cuda", 0)
_LAUNCH_LOCK = threading.Lock()
_RealGenerator = torch.Generator


_TO_HOST = (torch.Tensor.__int__, torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.tolist,
            torch.Tensor.numpy)
_STATE: list = []  # the open fake_cuda() contexts' states (dispatch counts syncs into the innermost)


def _is_cuda(d) -> bool:
    if isinstance(d, FakeCudaTensor):
        return True
    if isinstance(d, (str, torch.device)):
        return torch.device(d).type == "cuda"
    return False


class FakeCudaTensor(torch.Tensor):
    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), dtype=inner.dtype,
                                                device=FAKE, requires_grad=False,
                                                storage_offset=inner.storage_offset())
        r.inner = inner
        return r

    def __repr__(self):
        return f"FakeCudaTensor({self.inner!r})"

    def __format__(self, spec):
        return format(self.inner, spec)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        # Here, not in the mode: these must work in any thread (the scheduler's forward runs in one).
        kwargs = kwargs or {}
        if func in _TO_HOST and isinstance(args[0], FakeCudaTensor):  # a value read on the host: a sync
            if _STATE:
                _STATE[-1].syncs += 1
            return func(args[0].inner, *args[1:], **kwargs)
        if func is torch.Tensor.copy_ and isinstance(args[0], FakeCudaTensor):
            # the binding takes a device guard too; a CPU source is a host -> device copy, as on CUDA
            src = args[1]
            if not isinstance(src, FakeCudaTensor) and _STATE:
                _STATE[-1].moves.append(("copy_", tuple(src.shape)))
            args[0].inner.copy_(unwrap(src), *args[2:], **kwargs)
            return args[0]
        if func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__):
            # Python indexing takes a device guard in C++ (which needs CUDA): index the CPU data instead
            out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
            return None if out is None else FakeCudaTensor(out)
        if func is torch.where and len(args) == 3:
            # where(cond, x, scalar) builds the scalar's tensor on x's device in C++ (needs CUDA): give it
            # a 0-dim CPU tensor, which CUDA accepts too
            args = tuple(torch.tensor(a) if isinstance(a, (int, float, bool)) else a for a in args)
        name = getattr(func, "__name__", "")
        if (name.endswith("_like") or name.startswith("new_")) and isinstance(args[0], FakeCudaTensor) \
                and _is_cuda(kwargs.get("device", FAKE)):
            # factories shaped after a tensor allocate on its device without a tensor operand: make on the CPU
            kw = {k: ("cpu" if k == "device" else v) for k, v in kwargs.items()}
            return FakeCudaTensor(func(*tree_map(unwrap, args), **kw))
        if func is torch.Tensor.to and isinstance(args[0], FakeCudaTensor):
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))), None))
            if target is None or _is_cuda(target):  # a dtype change, or a move onto its own device
                rest = tuple(a.dtype if isinstance(a, torch.Tensor) else "cpu" if _is_cuda(a) else a for a in args[1:])
                kw = {k: ("cpu" if k == "device" else v) for k, v in kwargs.items()}
                out = args[0].inner.to(*rest, **kw)
                return args[0] if out is args[0].inner else FakeCudaTensor(out)
        with torch._C.DisableTorchFunctionSubclass():
            return func(*args, **kwargs)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        for t in tree_flatten((args, kwargs))[0]:
            if isinstance(t, torch.Tensor) and not isinstance(t, FakeCudaTensor) and t.dim() > 0:
                raise RuntimeError(f"Expected all tensors to be on the same device, but found at least two "
                                   f"devices, cuda:0 and {t.device}! ({func})")
        unwrap = lambda t: t.inner if isinstance(t, FakeCudaTensor) else t  # noqa: E731
        to_cpu = func.overloadpacket in (torch.ops.aten._to_copy, torch.ops.aten.to) and any(
            isinstance(d, torch.device) and d.type == "cpu" for d in list(args[1:]) + [kwargs.get("device")])
        if _STATE and (to_cpu or func is torch.ops.aten._local_scalar_dense.default):
            _STATE[-1].syncs += 1
        kwargs = {k: ("cpu" if k == "device" and _is_cuda(v) else v) for k, v in kwargs.items()}
        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        if to_cpu:
            return out
        return tree_map(lambda t: FakeCudaTensor(t) if isinstance(t, torch.Tensor) else t, out)


def wrap(t: torch.Tensor) -> FakeCudaTensor:
    return t if isinstance(t, FakeCudaTensor) else FakeCudaTensor(t)


def unwrap(t):
    return t.inner if isinstance(t, FakeCudaTensor) else t


class _FakeGenerator(_RealGenerator):
    """torch.Generator(device="cuda") on a CPU-only build: a CPU generator that says cuda:0."""

    def __new__(cls, device="cpu"):
        fake = _is_cuda(device)
        g = _RealGenerator.__new__(cls, device="cpu" if fake else device)
        g.fake = fake
        return g

    def __init__(self, device="cpu"):
        pass

    @property
    def device(self):
        return FAKE if self.fake else super().device


@dataclass
class FakeCuda:
    pinned: int = 0  # pin_memory requests seen (ignored: no CUDA here)
    syncs: int = 0   # device -> host reads (item, bool, int, tolist, .cpu()): each a sync on a GPU
    moves: list = field(default_factory=list)  # (what, shape) of every CPU -> cuda copy


class _Mode(TorchFunctionMode):
    def __init__(self, state: FakeCuda):
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if kwargs.pop("pin_memory", False):
            self.state.pinned += 1
        if func is torch.Tensor.pin_memory:
            self.state.pinned += 1
            return args[0]
        if func is torch.Tensor.cuda:
            self.state.moves.append(("cuda", tuple(args[0].shape)))
            return wrap(args[0]) if isinstance(args[0], FakeCudaTensor) else FakeCudaTensor(args[0].clone())
        if func is torch.Tensor.to:
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device, torch.Tensor))), None))
            if _is_cuda(target) and not isinstance(args[0], FakeCudaTensor):  # a copy, as a real move is
                rest = tuple(a.dtype if isinstance(a, torch.Tensor) else "cpu" if _is_cuda(a) else a for a in args[1:])
                kwargs = {k: ("cpu" if k == "device" else v) for k, v in kwargs.items()}
                self.state.moves.append(("to", tuple(args[0].shape)))
                return FakeCudaTensor(args[0].to(*rest, **kwargs).clone())
            return func(*args, **kwargs)
        gen = kwargs.get("generator")
        dev = kwargs.get("device")
        if isinstance(gen, _FakeGenerator) and gen.fake and not _is_cuda(dev) and not any(
                isinstance(a, FakeCudaTensor) for a in tree_flatten((args, kwargs))[0]):
            raise RuntimeError("Expected a 'cpu' device type for generator but found 'cuda'")
        if _is_cuda(dev):
            kwargs["device"] = "cpu"
            out = func(*args, **kwargs)
            return tree_map(lambda t: FakeCudaTensor(t) if isinstance(t, torch.Tensor) else t, out)
        return func(*args, **kwargs)


@contextlib.contextmanager
def fake_cuda():
    """Tensors for "cuda" become FakeCudaTensors while this is open (see the module docstring)."""
    state = FakeCuda()
    torch.Generator = _FakeGenerator
    _STATE.append(state)
    try:
        with _Mode(state):
            yield state
    finally:
        _STATE.pop()
        torch.Generator = _RealGenerator


def kernel_launchers() -> list[tuple[object, str]]:
    """(module, name) of every Triton launcher the engine calls on a GPU: what a fake-GPU run patches."""
    import gboost.kernels.fused_sampling as fs
    import gboost.kernels.kv_write as kvw
    import gboost.kernels.paged_attention as pa
    import gboost.kernels.spec_verify as sv
    import gboost.kernels.step_scoring as ss
    import gboost.kernels.weight_only as wo
    return [(kvw, "store_kv_triton"), (pa, "paged_attention_triton"), (fs, "fused_sample_triton"),
            (fs, "fuse_logprobs_triton"), (sv, "spec_verify_triton"), (ss, "step_rewards_triton"),
            (wo, "wo_matmul_triton")]


def checked_launch(fn, name: str, calls: list | None = None):
    """A stand-in for a kernel launcher: every tensor argument must be on one device (it records the
    devices in `calls`), then `fn` runs on the CPU copies; tensor outputs come back on that device."""
    def run(*args, **kwargs):
        tensors = [(i, a) for i, a in enumerate(tree_flatten((args, kwargs))[0]) if isinstance(a, torch.Tensor)]
        devices = {str(a.device) for _, a in tensors}
        if calls is not None:
            calls.append((name, devices))
        assert len(devices) <= 1, f"{name}: tensor arguments on {sorted(devices)}"
        on_fake = any(isinstance(a, FakeCudaTensor) for _, a in tensors)
        with _LAUNCH_LOCK:  # Triton's interpreter patches triton.language globally: one launch at a time
            out = fn(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        return tree_map(lambda t: FakeCudaTensor(t) if isinstance(t, torch.Tensor) and on_fake else t, out)
    return run


def to_fake_cuda(module: torch.nn.Module) -> torch.nn.Module:
    """module.to("cuda") for FakeCudaTensors (nn.Module.to would set .data, which a wrapper subclass
    cannot take); shared parameters and buffers (tied embeddings, one rotary table) stay shared."""
    memo: dict[int, torch.Tensor] = {}
    for m in module.modules():
        for name, p in list(m._parameters.items()):
            if p is not None:
                if id(p) not in memo:
                    memo[id(p)] = torch.nn.Parameter(FakeCudaTensor(p.detach().clone()), requires_grad=False)
                m._parameters[name] = memo[id(p)]
        for name, b in list(m._buffers.items()):
            if b is not None:
                if id(b) not in memo:
                    memo[id(b)] = FakeCudaTensor(b.clone())
                m._buffers[name] = memo[id(b)]
    return module
