"""kernels/weight_only.py against float64, on odd shapes, with poisoned outputs: the int4 layout
(nibble order, group scales and zeros) and int8 per-row scales, decode and prefill tiles."""
import pytest
import torch

from fp_bounds import U32, assert_within
from gboost.kernels.weight_only import (GROUP, dequantize, pack_int4, unpack_int4, wo_matmul, wo_matmul_ref,
                                        wo_matmul_triton)
from gboost.models.quant import Int4Codes

EPS = {torch.float32: U32, torch.bfloat16: 2.0 ** -8}  # unit roundoff of the output dtype


def _int4(n, k, g):
    codes = torch.randint(0, 16, (n, k), generator=g, dtype=torch.uint8)
    scale = torch.rand(n, k // GROUP, generator=g) * 0.1 + 0.01
    zero = torch.randn(n, k // GROUP, generator=g) * 0.1
    return codes, scale, zero


def _x(m, k, dtype, device, g):
    wide = torch.randn(m, k + 5, generator=g)  # a row stride above K, as a slice of a wider buffer
    return wide.to(dtype)[:, :k].to(device)


def _bound(x64, a64, k, device, x_dtype, out_dtype, y64, bias64=None, w_rounds=True):
    """|y - y64| for y = fl(x W^T + b): fp32 products and a K-term sum (any order: K u, plus 2 u
    for forming each int4 weight), where a64 = |q - 8| scale + |zero| (int8: |q| scale) bounds
    each |w|; compiled, the tensor cores take w (and an fp32 x) rounded to bf16; then the
    output's rounding. ``device`` cpu means the interpreter."""
    s = x64.abs() @ a64.T
    rel = (k + 3) * U32
    if device.type == "cuda":
        rel += 2.0 ** -8 * (int(w_rounds) + (x_dtype == torch.float32))
    extra = 0 if bias64 is None else U32 * bias64.abs()
    # the interpreter truncates fp32 to bf16 (up to one ulp) where a GPU rounds (half an ulp)
    out_eps = EPS[out_dtype] * (2 if device.type == "cpu" and out_dtype == torch.bfloat16 else 1)
    return rel * s + extra + out_eps * (y64.abs() + rel * s + extra) + 2.0 ** -126


@pytest.mark.parametrize("m,n,k", [(1, 37, 96), (3, 100, 160), (16, 64, 256), (17, 65, 224), (40, 130, 96)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True])
def test_int4_matmul_against_float64(device, gen, m, n, k, dtype, bias):
    codes, scale, zero = _int4(n, k, gen)
    x = _x(m, k, dtype, device, gen)
    b = torch.randn(n, generator=gen).to(dtype).to(device) if bias else None
    # the weight from its definition, in float64: nothing from the module under test
    q64 = codes.double().view(n, k // GROUP, GROUP) - 8
    w64 = (q64 * scale.double()[..., None] + zero.double()[..., None]).view(n, k)
    a64 = (q64.abs() * scale.double()[..., None] + zero.double().abs()[..., None]).view(n, k)
    x64 = x.double().cpu()
    y64 = x64 @ w64.T + (b.double().cpu() if bias else 0)
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    qw = pack_int4(codes).to(device)
    wo_matmul_triton(x, qw, scale.to(device), zero.to(device), b, out=out)
    bound = _bound(x64, a64, k, device, dtype, dtype, y64, b.double().cpu() if bias else None)
    assert_within(out, y64, bound, "triton int4")
    assert_within(wo_matmul_ref(x, qw, scale.to(device), zero.to(device), b), y64, bound, "reference int4")


@pytest.mark.parametrize("m,n,k", [(1, 33, 99), (5, 48, 64), (20, 17, 130)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_int8_matmul_against_float64(device, gen, m, n, k, dtype):
    codes = torch.randint(-127, 128, (n, k), generator=gen, dtype=torch.int8)
    scale = torch.rand(n, generator=gen) * 0.01 + 1e-3
    b = torch.randn(n, generator=gen).to(dtype).to(device)
    x = _x(m, k, dtype, device, gen)
    w64 = codes.double() * scale.double()[:, None]
    x64 = x.double().cpu()
    y64 = x64 @ w64.T + b.double().cpu()
    out = torch.full((m, n), float("nan"), dtype=dtype, device=device)
    wo_matmul_triton(x, codes.to(device), scale.to(device), None, b, out=out)
    # integer products in bf16 are exact: only the sum, the scale and the bias round
    bound = _bound(x64, w64.abs(), k + 1, device, dtype, dtype, y64, b.double().cpu(), w_rounds=False)
    assert_within(out, y64, bound, "triton int8")


def test_the_layout_is_int4codes():
    """pack/unpack and dequantize say what models/quant.py's Int4Codes says, bit for bit; a
    swapped nibble order or a transposed group layout would not."""
    g = torch.Generator().manual_seed(3)
    codes, scale, zero = _int4(6, 96, g)
    assert torch.equal(unpack_int4(pack_int4(codes)), codes)
    assert pack_int4(codes)[0, 0] == codes[0, 0] | (codes[0, 1] << 4)
    assert torch.equal(dequantize(pack_int4(codes), scale, zero), Int4Codes(codes, scale, zero).dequantize())


def test_empty_and_dispatch(device, gen, monkeypatch):
    codes, scale, zero = _int4(20, 64, gen)
    qw, s, z = pack_int4(codes).to(device), scale.to(device), zero.to(device)
    assert wo_matmul_triton(torch.zeros(0, 64, device=device), qw, s, z).shape == (0, 20)
    x = torch.randn(2, 3, 64, generator=gen).to(device)
    q64 = codes.double().view(20, 2, GROUP) - 8
    w64 = (q64 * scale.double()[..., None] + zero.double()[..., None]).view(20, 64)
    a64 = (q64.abs() * scale.double()[..., None] + zero.double().abs()[..., None]).view(20, 64)
    x64 = x.double().cpu().reshape(6, 64)
    y64 = x64 @ w64.T
    bound = _bound(x64, a64, 64, device, torch.float32, torch.float32, y64)
    assert wo_matmul(x, qw, s, z).shape == (2, 3, 20)
    assert_within(wo_matmul(x, qw, s, z).reshape(6, 20), y64, bound, "default dispatch")
    monkeypatch.setenv("GBOOST_FORCE_TRITON", "1")
    assert_within(wo_matmul(x, qw, s, z).reshape(6, 20), y64, bound, "forced Triton")
