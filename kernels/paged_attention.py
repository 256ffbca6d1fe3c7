"""Paged attention over the block-table KV cache: decode (qlen 1) and extend (qlen k) in one kernel.

Layout and semantics are fixed in docs/CONTRACTS.md: queries are packed [T, Hq, D], rows
cu[b]:cu[b+1] belong to sequence b, query i of b sits at position seq_lens[b]-qlen_b+i and sees keys
0..that position. GQA: q head h reads kv head h // (Hq // Hkv).
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from ._common import interpreting, launch, memoized, next_pow2, same_device, use_triton


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
    q_ptr, kc_ptr, vc_ptr, bt_ptr, sl_ptr, cu_ptr, o_ptr, lse_ptr,
    sq_t, sq_h, sq_d, so_t, so_h, so_d,
    sk_b, sk_o, sk_h, sk_d, sv_b, sv_o, sv_h, sv_d, sbt_b,
    B, qk_scale, D, BS, HQ, kv_chunk, s_split_o, s_split_l,
    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr, BLOCK_Q: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, UPCAST: tl.constexpr, DOT_PREC: tl.constexpr,
    WRITE_LSE: tl.constexpr = False,
):
    # Split-KV (grid axis 2): split s covers keys [s*kv_chunk, (s+1)*kv_chunk) and writes its partial
    # (out, lse; WRITE_LSE stores the log2-domain logsumexp [T, HQ]) at s*s_split_o / s*s_split_l;
    # _merge_splits_kernel combines them.
    # Tile = BLOCK_Q query tokens x all GROUP q heads of one kv head: K/V are read once for the whole group.
    tile = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
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
        st_off = tok * HQ + qh  # [T, HQ] contiguous side buffer
        m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)  # finite start: fully-masked rows give 0, not NaN
        l_i = tl.zeros([BLOCK_M], tl.float32)
        acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
        bt_row = bt_ptr + b.to(tl.int64) * sbt_b
        kvh64 = kvh.to(tl.int64)
        k_lo = split * kv_chunk
        k_hi = tl.minimum(kv_end, k_lo + kv_chunk)
        for start in range(k_lo, k_hi, BLOCK_N):
            n = start + tl.arange(0, BLOCK_N)
            n_ok = n < k_hi
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
        o_ptr += split.to(tl.int64) * s_split_o
        lse_ptr += split.to(tl.int64) * s_split_l
        tl.store(o_ptr + tok[:, None] * so_t + qh[:, None] * so_h + d[None, :] * so_d,
                 out.to(o_ptr.dtype.element_ty), mask=qmask)
        if WRITE_LSE:
            tl.store(lse_ptr + st_off, m_i + tl.log2(tl.where(l_i > 0, l_i, 1.0)), mask=row_ok)


@triton.jit
def _merge_splits_kernel(o_part_ptr, lse_part_ptr, out_ptr, so_t, so_h, so_d, S, s_split_o, s_split_l, HQ, D,
                         BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr):
    # out = sum_s 2^(lse_s - m) * o_s / sum_s 2^(lse_s - m): exact recombination of the partial softmaxes.
    t = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    sp = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    row = t * HQ + h
    lse = tl.load(lse_part_ptr + sp * s_split_l + row, mask=sp < S, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))
    o = tl.load(o_part_ptr + sp[:, None] * s_split_o + row * D + d[None, :], mask=(sp < S)[:, None] & (d < D)[None, :],
                other=0.0)
    res = tl.sum(w[:, None] * o, 0) / tl.sum(w, 0)
    tl.store(out_ptr + t * so_t + h * so_h + d * so_d, res.to(out_ptr.dtype.element_ty), mask=d < D)


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


def paged_attention_torch(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=None,
                          max_q_len=None, memo: dict | None = None):
    """The CPU path: torch's fused attention over the batch, one padded computation per
    class of (query length, context length), classes by powers of two.  A scheduler batch mixes
    decode rows with extends (PRM steps, speculative drafts) and short contexts with long ones,
    and padding every row to the longest of both would dominate the forward.  Classes cut that
    padding to under 2x per dimension. The padding plan depends on
    the batch only: `memo` (one dict per forward) lets every layer after the first reuse it."""
    out = torch.empty_like(q) if out is None else out
    plans = memoized(memo, "cpu_attention", lambda: plan_classes(block_tables, seq_lens, cu_seqlens_q,
                                                                 k_cache.shape[1], k_cache.shape[0], q.shape[0]))
    for p in plans:
        _attend(q, k_cache, v_cache, p, scale, out)
    return out


class PaddedPlan(NamedTuple):
    tables: torch.Tensor        # [B, W] int64, clamped into the pool
    rows: torch.Tensor | None   # [B, Qmax] packed row of each query; None: the rows are q itself
    valid: torch.Tensor         # [B, Qmax] real (not padding) queries
    visible: torch.Tensor       # [B, 1, Qmax, Lmax] keys each query sees (causal, within its length)
    dest: torch.Tensor | None   # packed rows of the valid queries (None when rows is None)


def plan_classes(block_tables, seq_lens, cu_seqlens_q, block_size: int, num_blocks: int, T: int) -> list[PaddedPlan]:
    cu = cu_seqlens_q.long()
    qlens = cu[1:] - cu[:-1]
    classes: dict[tuple[int, int], list[int]] = {}
    for b, (n, L) in enumerate(zip(qlens.tolist(), seq_lens.tolist())):
        classes.setdefault((max(n - 1, 0).bit_length(), (-(-L // block_size) - 1).bit_length()), []).append(b)
    plans = []
    for members in classes.values():
        idx = torch.tensor(members, device=cu.device) if len(classes) > 1 else None
        sl = seq_lens if idx is None else seq_lens[idx]
        width = -(-int(sl.max()) // block_size)
        tables = (block_tables if idx is None else block_tables[idx])[:, :width]
        starts, lens = (cu[:-1], qlens) if idx is None else (cu[:-1][idx], qlens[idx])
        plans.append(plan_padded(tables, sl, starts, lens, block_size, num_blocks, T))
    return plans


def plan_padded(tables, seq_lens, starts, qlens, block_size: int, num_blocks: int, T: int) -> PaddedPlan:
    """Queries padded to the longest of these sequences, keys gathered through the padded tables.
    A padding query sits past its sequence's real ones, so it sees keys too (no empty softmax)."""
    dev = tables.device
    B, Qmax, Lmax = seq_lens.shape[0], int(qlens.max()), tables.shape[1] * block_size
    i = torch.arange(Qmax, device=dev)
    rows = (starts[:, None] + i[None, :]).clamp(max=T - 1)
    valid = i[None, :] < qlens[:, None]
    qpos = seq_lens.long()[:, None] - qlens[:, None] + i[None, :]
    visible = torch.arange(Lmax, device=dev)[None, None, :] <= qpos[:, :, None]
    # every row real and in order (decode batches, equal extends): no gather, no scatter
    dense = B * Qmax == T and bool(torch.equal(rows.flatten(), torch.arange(T, device=dev)))
    # entries past a sequence's length are masked anyway
    return PaddedPlan(tables.long().clamp(0, num_blocks - 1), None if dense else rows, valid,
                      visible[:, None], None if dense else rows[valid])


def _attend(q, k_cache, v_cache, p: PaddedPlan, scale, out):
    """One padded class through torch's fused CPU attention (flash-style, fp32 accumulation, GQA
    without repeating K/V): 2-4.5x the explicit fp32 einsum-softmax-einsum on the 1.5B's shapes."""
    T, Hq, D = q.shape
    (B, Qmax), Hkv = p.valid.shape, k_cache.shape[2]
    Lmax = p.visible.shape[-1]
    K = k_cache[p.tables].reshape(B, Lmax, Hkv, D).transpose(1, 2)
    V = v_cache[p.tables].reshape(B, Lmax, Hkv, D).transpose(1, 2)
    Q = (q if p.rows is None else q[p.rows]).reshape(B, Qmax, Hq, D).transpose(1, 2)
    O = F.scaled_dot_product_attention(Q, K.to(q.dtype), V.to(q.dtype), attn_mask=p.visible, scale=scale,
                                       enable_gqa=Hq != Hkv).transpose(1, 2)          # [B, Qmax, Hq, D]
    if p.rows is None:
        out.copy_(O.reshape(T, Hq, D))
    else:
        out[p.dest] = O[p.valid].to(out.dtype)


def _attend_padded(q, k_cache, v_cache, tables, seq_lens, starts, qlens, scale, out):
    """One padding for the given sequences (the benchmark's baseline for the classes)."""
    _attend(q, k_cache, v_cache, plan_padded(tables, seq_lens, starts, qlens, k_cache.shape[1], k_cache.shape[0],
                                             q.shape[0]), scale, out)


_NUM_SMS = {}


def _num_sms(device):
    if device.type != "cuda":
        return 1
    if device.index not in _NUM_SMS:
        _NUM_SMS[device.index] = torch.cuda.get_device_properties(device).multi_processor_count
    return _NUM_SMS[device.index]


def _launch(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out, block_m, block_n, num_warps,
            num_stages, num_splits=None):
    T, Hq, D = q.shape
    B = seq_lens.shape[0]
    BS, Hkv = k_cache.shape[1], k_cache.shape[2]
    assert Hq % Hkv == 0 and k_cache.shape[3] == D and v_cache.shape == k_cache.shape
    group = Hq // Hkv
    group_pad = next_pow2(group)
    if block_m is None:
        # Decode-like batches (about one query per sequence) want small tiles; extends want bigger ones.
        block_m = 16 if (T / B) * group_pad <= 16 else 64
    block_m = max(block_m, group_pad, 16)
    block_q = block_m // group_pad
    # Per-key page gathers hold [BLOCK_N, BLOCK_D] 64-bit pointers: these sizes compile without spills
    # on sm_90 (tests/kernels/sm90_compile.py -v prints registers); retune with benchmarks/ on a GPU.
    # fp32 K/V tiles take twice bf16's registers: fp32 prefill at BLOCK_N=64, D=64 spilled (376 bytes).
    block_d = max(16, next_pow2(D))
    block_n = block_n or (64 if block_d * q.element_size() <= 128 else 32)
    interp = interpreting()
    n_tiles = T // block_q + B
    max_kv = block_tables.shape[1] * BS  # host-known bound on seq_lens: no sync to size the split grid
    if num_splits is None:
        # Flash-decoding: too few (tile, kv-head) programs for the SMs and long contexts -> split the keys.
        num_splits = 1
        sms = _num_sms(q.device)
        if n_tiles * Hkv < sms and max_kv >= 1024:
            num_splits = max(1, min(64, triton.cdiv(max_kv, 256), (2 * sms) // (n_tiles * Hkv)))
    dst, dst_lse, write_lse = out, None, False
    if num_splits > 1:
        chunk = triton.cdiv(triton.cdiv(max_kv, num_splits), block_n) * block_n
        num_splits = triton.cdiv(max_kv, chunk)
        dst = torch.empty(num_splits, T, Hq, D, dtype=torch.float32, device=q.device)
        dst_lse = torch.empty(num_splits, T, Hq, dtype=torch.float32, device=q.device)
        write_lse = True
    else:
        chunk = 1 << 30
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"
    launch(
        _paged_attn_kernel, (n_tiles, Hkv, num_splits), q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, dst,
        dst_lse if dst_lse is not None else dst,
        *q.stride(), *dst.stride()[-3:], *k_cache.stride(), *v_cache.stride(), block_tables.stride(0),
        B, scale * math.log2(math.e), D, BS, Hq, chunk, T * Hq * D, T * Hq,
        GROUP=group, GROUP_PAD=group_pad, BLOCK_Q=block_q, BLOCK_M=block_m, BLOCK_N=block_n,
        BLOCK_D=block_d, UPCAST=interp,
        DOT_PREC="ieee" if interp else dot_prec, WRITE_LSE=write_lse,
        num_warps=num_warps, num_stages=num_stages, compiled={"UPCAST": False, "DOT_PREC": dot_prec},
    )
    if num_splits > 1:
        launch(_merge_splits_kernel, (T, Hq), dst, dst_lse, out, *out.stride(), num_splits, T * Hq * D, T * Hq, Hq, D,
               BLOCK_S=next_pow2(num_splits), BLOCK_D=block_d, num_warps=4)
    return out


def paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale,
                           out=None, block_m=None, block_n=None, num_warps=8, num_stages=2, num_splits=None):
    out = torch.empty_like(q) if out is None else out
    if q.shape[0] == 0:
        return out
    return _launch(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out, block_m, block_n,
                   num_warps, num_stages, num_splits=num_splits)


def paged_attention(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=None, memo=None):
    """q [T,Hq,D] packed; k/v_cache [num_blocks,BS,Hkv,D] (strided); block_tables [B,MAXB] int32;
    seq_lens [B] int32 (length incl. the new tokens); cu_seqlens_q [B+1] int32 -> out [T,Hq,D].
    memo: a dict that lives for one forward (the CPU path keeps its padding plan there)."""
    same_device(q=q, k_cache=k_cache, v_cache=v_cache, block_tables=block_tables, seq_lens=seq_lens,
                cu_seqlens_q=cu_seqlens_q, out=out)
    if use_triton(q, k_cache):
        return paged_attention_triton(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=out)
    return paged_attention_torch(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, out=out, memo=memo)
