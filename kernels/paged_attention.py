"""Paged attention over the block-table KV cache: decode (qlen 1) and extend (qlen k) in one kernel.

Layout and semantics are fixed in docs/CONTRACTS.md: queries are packed [T, Hq, D], rows
cu[b]:cu[b+1] belong to sequence b, query i of b sits at position seq_lens[b]-qlen_b+i and sees keys
0..that position. GQA: q head h reads kv head h // (Hq // Hkv).
"""
import math

import torch
import triton
import triton.language as tl

from ._common import interpreting, next_pow2, use_triton


@triton.jit
def _find_seq(cu_ptr, tile, B, BLOCK_Q: tl.constexpr):
    # Sequence b owns tiles [cu[b]//BLOCK_Q + b, cu[b+1]//BLOCK_Q + b + 1): monotone, so bisect (no host sync).
    lo = tile * 0  # tensors, not Python ints: loop-carried types must stay fixed
    hi = tile * 0 + B
    while lo < hi:
        mid = (lo + hi) // 2
        start = tl.load(cu_ptr + mid) // BLOCK_Q + mid
        if start <= tile:
            lo = mid + 1
        else:
            hi = mid
    return lo - 1


@triton.jit
def _paged_attn_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, sl_ptr, cu_ptr, o_ptr,
    sq_t, sq_h, sq_d, so_t, so_h, so_d,
    sk_b, sk_o, sk_h, sk_d, sv_b, sv_o, sv_h, sv_d, sbt_b,
    B, qk_scale, D, BS,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
):
    # Tile = BLOCK_Q query tokens x all GROUP q heads of one kv head: K/V are read once for the whole group.
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    b = _find_seq(cu_ptr, tile, B, BLOCK_Q)
    q_start = tl.load(cu_ptr + b)
    qlen = tl.load(cu_ptr + b + 1) - q_start
    local = tile - (q_start // BLOCK_Q + b)
    if local * BLOCK_Q < qlen:
        seq_len = tl.load(sl_ptr + b)
        m = tl.arange(0, BLOCK_M)
        qi = local * BLOCK_Q + m // GROUP_PAD
        g = m % GROUP_PAD
        row_ok = (qi < qlen) & (g < GROUP)
        qh = (kvh * GROUP + g).to(tl.int64)
        tok = (q_start + qi).to(tl.int64)
        d = tl.arange(0, BLOCK_D)
        d_ok = d < D
        qmask = row_ok[:, None] & d_ok[None, :]
        q = tl.load(q_ptr + tok[:, None] * sq_t + qh[:, None] * sq_h + d[None, :] * sq_d, mask=qmask, other=0.0)
        if UPCAST:  # interpreter: bf16 arithmetic is broken there, compute in fp32
            q = q.to(tl.float32)
        qpos = seq_len - qlen + qi
        # Keys past the tile's last query position are never visible: stop the loop there.
        kv_end = seq_len - qlen + tl.minimum(local * BLOCK_Q + BLOCK_Q, qlen)
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite start: fully-masked rows give 0, not NaN
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        bt_row = bt_ptr + b.to(tl.int64) * sbt_b
        kvh64 = kvh.to(tl.int64)
        for start in range(0, kv_end, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < kv_end
            # Per-key page lookup, so BLOCK_N need not equal the page size.
            blk = tl.load(bt_row + n // BS, mask=n_ok, other=0).to(tl.int64)
            off = (n % BS).to(tl.int64)
            kvmask = n_ok[:, None] & d_ok[None, :]
            k = tl.load(kc_ptr + blk[:, None] * sk_b + off[:, None] * sk_o + kvh64 * sk_h + d[None, :] * sk_d,
                        mask=kvmask, other=0.0)
            v = tl.load(vc_ptr + blk[:, None] * sv_b + off[:, None] * sv_o + kvh64 * sv_h + d[None, :] * sv_d,
                        mask=kvmask, other=0.0)
            if UPCAST:
                k = k.to(tl.float32)
                v = v.to(tl.float32)
            s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
            visible = (n[None, :] <= qpos[:, None]) & n_ok[None, :]
            s = tl.where(visible, s, float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            alpha = tl.exp2(m_i - m_new)
            p = tl.exp2(s - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
            m_i = m_new
        out = acc / tl.where(l_i > 0, l_i, 1.0)[:, None]
        tl.store(o_ptr + tok[:, None] * so_t + qh[:, None] * so_h + d[None, :] * so_d,
                 out.to(o_ptr.dtype.element_ty), mask=qmask)


def paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=None):
    """Reference: gather each sequence's K/V through its block table, causal masked softmax in fp32."""
    T, Hq, D = q.shape
    BS, Hkv = k_cache.shape[1], k_cache.shape[2]
    group = Hq // Hkv
    out = torch.empty_like(q) if out is None else out
    cu = cu_seqlens_q.tolist()
    lens = seq_lens.tolist()
    for b in range(len(lens)):
        L, s, e = lens[b], cu[b], cu[b + 1]
        qlen = e - s
        nb = -(-L // BS)
        blocks = block_tables[b, :nb].long()
        K = k_cache[blocks].reshape(nb * BS, Hkv, D)[:L].float()
        V = v_cache[blocks].reshape(nb * BS, Hkv, D)[:L].float()
        Q = q[s:e].float().view(qlen, Hkv, group, D)  # q head h = kv head h // group, member h % group
        S = torch.einsum("qkgd,lkd->kgql", Q, K) * scale
        qpos = L - qlen + torch.arange(qlen, device=q.device)
        visible = torch.arange(L, device=q.device)[None, :] <= qpos[:, None]
        P = torch.softmax(S.masked_fill(~visible, float("-inf")), dim=-1)
        out[s:e] = torch.einsum("kgql,lkd->qkgd", P, V).reshape(qlen, Hq, D).to(q.dtype)
    return out


def paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale,
                           out=None, block_m=None, block_n=None, num_warps=8, num_stages=2):
    T, Hq, D = q.shape
    B = seq_lens.shape[0]
    BS, Hkv = k_cache.shape[1], k_cache.shape[2]
    assert Hq % Hkv == 0 and k_cache.shape[3] == D and v_cache.shape == k_cache.shape
    group = Hq // Hkv
    group_pad = next_pow2(group)
    out = torch.empty_like(q) if out is None else out
    if T == 0:
        return out
    if block_m is None:
        # Decode-like batches (about one query per sequence) want small tiles; extends want bigger ones.
        block_m = 16 if (T / B) * group_pad <= 16 else 64
    block_m = max(block_m, group_pad, 16)
    block_q = block_m // group_pad
    # Per-key page gathers hold [BLOCK_N, BLOCK_D] 64-bit pointers: these sizes compile without spills
    # on sm_90 (tests/kernels/sm90_compile.py -v prints registers); retune with benchmarks/ on a GPU.
    block_d = max(16, next_pow2(D))
    block_n = block_n or (64 if block_d <= 64 else 32)
    grid = (T // block_q + B, Hkv)
    interp = interpreting()
    _paged_attn_kernel[grid](
        q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, out,
        *q.stride(), *out.stride(), *k_cache.stride(), *v_cache.stride(), block_tables.stride(0),
        B, scale * math.log2(math.e), D, BS,
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=block_d, UPCAST=interp,
        DOT_PREC="ieee" if (interp or q.dtype == torch.float32) else "tf32",
        num_warps=num_warps, num_stages=num_stages,
    )
    return out


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=None):
    """q [T,Hq,D] packed; k/v_cache [num_blocks,BS,Hkv,D] (strided); block_tables [B,MAXB] int32;
    seq_lens [B] int32 (length incl. the new tokens); cu_seqlens_q [B+1] int32 -> out [T,Hq,D]."""
    if use_triton(q, k_cache):
        return paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=out)
    return paged_attention_ref(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=out)
