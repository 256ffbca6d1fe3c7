"""Weight-only int4 / int8 matmuls: y = x W^T (+ b) with W dequantized in registers, one tile at a
time, so a decode step reads 4 or 8 bits a weight instead of 16.

Layouts (what models/quant.py keeps on a GPU):
  int4  qweight [N, K/2] uint8: column 2j in the low nibble of byte j, 2j + 1 in the high one;
        scale, zero [N, K/group]: w = (q - 8) * scale + zero, q in 0..15 (quant.Int4Codes).
  int8  qweight [N, K] int8, scale [N]: w = q * scale (symmetric, per output row).
One program computes a BLOCK_M x BLOCK_N tile of y and walks K in BLOCK_K steps; decode (M <= 16)
is one row block, so every weight byte is read once. Products accumulate in fp32; the compiled
kernel feeds the tensor cores bf16 (exact for int8's integers, one rounding of w for int4), the
interpreter fp32 (its bf16 arithmetic is not IEEE).
"""
import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import interpreting, launch, same_device, use_triton

GROUP = 32


@triton.jit
def _wo_matmul_kernel(x_ptr, w_ptr, s_ptr, z_ptr, b_ptr, y_ptr, M, N, K, s_xm, s_ym, s_wn, s_sn,
                      INT4: tl.constexpr, GROUP: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_BF16: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_m = tl.program_id(1)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    m_ok = rm < M
    n_ok = rn < N
    rn64 = rn.to(tl.int64)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        rk = k0 + tl.arange(0, BLOCK_K)
        k_ok = rk < K
        x = tl.load(x_ptr + rm.to(tl.int64)[:, None] * s_xm + rk[None, :], mask=m_ok[:, None] & k_ok[None, :],
                    other=0.0).to(tl.float32)
        if INT4:
            # a byte holds two columns: unpack [BLOCK_N, BLOCK_K/2] bytes, then apply each group's scale
            # and zero as [BLOCK_N, groups, 1] (one load each per group, not per column)
            rb = k0 // 2 + tl.arange(0, BLOCK_K // 2)
            byte = tl.load(w_ptr + rn64[:, None] * s_wn + rb[None, :], mask=n_ok[:, None] & (rb < K // 2)[None, :],
                           other=0)
            q = tl.interleave(byte & 0xF, byte >> 4).to(tl.float32)
            rg = k0 // GROUP + tl.arange(0, BLOCK_K // GROUP)
            gmask = n_ok[:, None] & (rg < K // GROUP)[None, :]
            s = tl.load(s_ptr + rn64[:, None] * s_sn + rg[None, :], mask=gmask, other=0.0).to(tl.float32)
            z = tl.load(z_ptr + rn64[:, None] * s_sn + rg[None, :], mask=gmask, other=0.0).to(tl.float32)
            q3 = tl.reshape(q, [BLOCK_N, BLOCK_K // GROUP, GROUP]) - 8.0
            w = tl.reshape(q3 * s[:, :, None] + z[:, :, None], [BLOCK_N, BLOCK_K])  # masked: 0 * 0 + 0
        else:
            w = tl.load(w_ptr + rn64[:, None] * s_wn + rk[None, :], mask=n_ok[:, None] & k_ok[None, :],
                        other=0).to(tl.float32)
        if DOT_BF16:
            acc += tl.dot(x.to(tl.bfloat16), tl.trans(w.to(tl.bfloat16)))
        else:
            acc += tl.dot(x, tl.trans(w), input_precision="ieee")
    if not INT4:  # a per-row scale: applied once, after the integer products
        acc = acc * tl.load(s_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    if HAS_BIAS:
        acc = acc + tl.load(b_ptr + rn, mask=n_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_ptr + rm.to(tl.int64)[:, None] * s_ym + rn[None, :], acc.to(y_ptr.dtype.element_ty),
             mask=m_ok[:, None] & n_ok[None, :])


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """[N, K] codes in 0..15 -> [N, K/2] uint8, column 2j in the low nibble of byte j."""
    c = codes.to(torch.uint8)
    return (c[:, 0::2] | (c[:, 1::2] << 4)).contiguous()


def unpack_int4(qweight: torch.Tensor) -> torch.Tensor:
    """pack_int4's inverse: [N, K/2] uint8 -> [N, K] uint8 codes."""
    return torch.stack([qweight & 0xF, qweight >> 4], -1).flatten(1)


def dequantize_codes(codes, scale, zero, group: int = GROUP) -> torch.Tensor:
    """The fp32 weight [N, K] of unpacked int4 codes [N, K]: (q - 8) * scale + zero per group."""
    n, k = codes.shape
    q = codes.view(n, k // group, group).float() - 8
    return (q * scale.float()[..., None] + zero.float()[..., None]).view(n, k)


def dequantize(qweight, scale, zero=None, group: int = GROUP) -> torch.Tensor:
    """The fp32 weight [N, K] a layout stands for: int4 when ``zero`` is given, else int8."""
    if zero is None:
        return qweight.float() * scale.float()[:, None]
    return dequantize_codes(unpack_int4(qweight), scale, zero, group)


def wo_matmul_ref(x, qweight, scale, zero=None, bias=None, group: int = GROUP) -> torch.Tensor:
    """Reference: dequantize in fp32, one fp32 matmul, the result in x's dtype."""
    y = F.linear(x.float(), dequantize(qweight, scale, zero, group), None if bias is None else bias.float())
    return y.to(x.dtype)


def _blocks(M: int) -> tuple[int, int, int, int]:
    # decode (M <= 16): one row block, wide K steps, narrow N tiles for many programs; prefill:
    # square-ish tiles that reuse each dequantized weight tile across 64 rows
    if M <= 16:
        return 16, 64, 128, 4
    return 64, 64, 64, 8


def wo_matmul_triton(x, qweight, scale, zero=None, bias=None, group: int = GROUP, out=None):
    """x [M, K] (bf16/fp16/fp32, unit stride in K) -> y [M, N] in x's dtype."""
    M, K = x.shape
    int4 = zero is not None
    N = qweight.shape[0]
    assert qweight.shape[1] == (K // 2 if int4 else K), (tuple(qweight.shape), K)
    if int4:
        assert K % group == 0 and scale.shape == (N, K // group) and zero.shape == scale.shape
    x = x if x.stride(-1) == 1 else x.contiguous()
    out = torch.empty(M, N, dtype=x.dtype, device=x.device) if out is None else out
    if M == 0 or N == 0:
        return out
    bm, bn, bk, warps = _blocks(M)
    scale = scale.contiguous()
    zero = scale if zero is None else zero.contiguous()
    grid = (triton.cdiv(N, bn), triton.cdiv(M, bm))
    launch(_wo_matmul_kernel, grid, x, qweight, scale, zero, scale if bias is None else bias, out, M, N, K,
           x.stride(0), out.stride(0), qweight.stride(0), scale.stride(0) if int4 else 0,
           INT4=int4, GROUP=group, HAS_BIAS=bias is not None, DOT_BF16=not interpreting(),
           BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, compiled={"DOT_BF16": True})
    return out


def wo_matmul(x, qweight, scale, zero=None, bias=None, group: int = GROUP) -> torch.Tensor:
    """y = x W^T + b for x [..., K] and a weight in one of the layouts above: Triton on CUDA (or
    when forced), else the reference."""
    same_device(x=x, qweight=qweight, scale=scale, zero=zero, bias=bias)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])
    if use_triton(x):
        y = wo_matmul_triton(x2, qweight, scale, zero, bias, group)
    else:
        y = wo_matmul_ref(x2, qweight, scale, zero, bias, group)
    return y.reshape(*lead, qweight.shape[0])
