"""Speculative verification of a batch of drafted steps in one launch (Leviathan/Chen rule).

Row b drafted tokens x_0..x_{L-1} (L = draft_lens[b] <= K) from draft distributions q[b, i]; the
target (fused) distributions are p[b, i], i = 0..K. Token i is accepted iff u[b, i] * q_i(x_i) < p_i(x_i)
(probability min(1, p/q)); at the first rejection j the replacement is drawn from
normalize(max(p_j - q_j, 0)); if all L are accepted a bonus token is drawn from p[b, L].
Draws use the Gumbel noise convention of fused_sampling: argmax_v log(r_v) + g[b, v]
(the normaliser is not needed). If the residual is all zero (only possible through rounding) the
draw falls back to p_j. Returns (accepted_len [B] int32, out_tokens [B, K+1] int64) where out_tokens
holds the accepted tokens, then the replacement/bonus token, then -1 padding.
"""
import torch
import triton
import triton.language as tl

from ._common import launch, next_pow2, same_device, use_triton


@triton.jit
def _spec_verify_kernel(
    draft_ptr, lens_ptr, q_ptr, p_ptr, u_ptr, g_ptr, acc_len_ptr, out_ptr,
    s_db, s_dk, s_qb, s_qk, s_qv, s_pb, s_pk, s_pv, s_ub, s_uk, s_gb, s_gv, s_ob, s_ok,
    K, V, BLOCK_K: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    L = tl.load(lens_ptr + row)
    i = tl.arange(0, BLOCK_K)
    live = i < L
    # All accept tests at once (they are independent given u); the first failure ends the prefix.
    x = tl.load(draft_ptr + row * s_db + i * s_dk, mask=live, other=0).to(tl.int64)
    px = tl.load(p_ptr + row * s_pb + i * s_pk + x * s_pv, mask=live, other=0.0).to(tl.float32)
    qx = tl.load(q_ptr + row * s_qb + i * s_qk + x * s_qv, mask=live, other=1.0).to(tl.float32)
    u = tl.load(u_ptr + row * s_ub + i * s_uk, mask=live, other=1.0).to(tl.float32)
    rejected = live & ~(u * qx < px)
    j = tl.min(tl.where(rejected, i, L), 0)
    resid = j < L  # rejection: residual max(p_j - q_j, 0); else bonus from p_L
    p_row = p_ptr + row * s_pb + j.to(tl.int64) * s_pk
    q_row = q_ptr + row * s_qb + tl.minimum(j, K - 1).to(tl.int64) * s_qk
    g_row = g_ptr + row * s_gb
    q_lim = tl.where(resid, V, 0)  # bonus draw: q is not read at all
    ar = tl.arange(0, BLOCK_V)
    best_r = tl.full([], float("-inf"), tl.float32)
    tok_r = tl.zeros([], tl.int64)
    best_p = tl.full([], float("-inf"), tl.float32)
    tok_p = tl.zeros([], tl.int64)
    for start in range(0, V, BLOCK_V):
        offs = start + ar
        mask = offs < V
        o = offs.to(tl.int64)
        pv = tl.load(p_row + o * s_pv, mask=mask, other=0.0).to(tl.float32)
        qv = tl.load(q_row + o * s_qv, mask=offs < q_lim, other=0.0).to(tl.float32)
        g = tl.load(g_row + o * s_gv, mask=mask, other=0.0)
        r = pv - qv
        sr = tl.where(r > 0, tl.log(tl.where(r > 0, r, 1.0)) + g, float("-inf"))
        sp = tl.where(pv > 0, tl.log(tl.where(pv > 0, pv, 1.0)) + g, float("-inf"))
        v1, i1 = tl.max(sr, 0, return_indices=True, return_indices_tie_break_left=True)
        v2, i2 = tl.max(sp, 0, return_indices=True, return_indices_tie_break_left=True)
        u1 = v1 > best_r
        tok_r = tl.where(u1, start + i1.to(tl.int64), tok_r)
        best_r = tl.where(u1, v1, best_r)
        u2 = v2 > best_p
        tok_p = tl.where(u2, start + i2.to(tl.int64), tok_p)
        best_p = tl.where(u2, v2, best_p)
    tok = tl.where(best_r > float("-inf"), tok_r, tok_p)
    io = tl.arange(0, BLOCK_K * 2)  # K+1 output slots
    xo = tl.load(draft_ptr + row * s_db + io * s_dk, mask=io < j, other=-1).to(tl.int64)
    res = tl.where(io < j, xo, tl.where(io == j, tok, -1))
    tl.store(out_ptr + row * s_ob + io * s_ok, res, mask=io < K + 1)
    tl.store(acc_len_ptr + row, j.to(tl.int32))


def spec_verify_ref(draft_tokens, draft_lens, q, p, accept_noise, resample_noise):
    """Reference, vectorised over the batch with torch ops that follow the docstring literally."""
    B, K = draft_tokens.shape
    V = p.shape[-1]
    ar = torch.arange(K, device=p.device)
    L = draft_lens.long()
    live = ar[None, :] < L[:, None]
    x = torch.where(live, draft_tokens, 0).clamp(0, V - 1)
    px = p[:, :K].float().gather(2, x[..., None])[..., 0]
    qx = q.float().gather(2, x[..., None])[..., 0]
    rejected = live & ~(accept_noise.float() * qx < px)
    j = torch.where(rejected, ar[None, :], L[:, None]).min(1).values
    bi = torch.arange(B, device=p.device)
    pj = p[bi, j].float()
    qj = torch.where((j < L)[:, None], q[bi, j.clamp(max=K - 1)].float(), 0.0)
    r = pj - qj
    neg = torch.tensor(float("-inf"), device=p.device)
    sr = torch.where(r > 0, torch.log(torch.where(r > 0, r, 1.0)) + resample_noise, neg)
    sp = torch.where(pj > 0, torch.log(torch.where(pj > 0, pj, 1.0)) + resample_noise, neg)
    tok = torch.where(sr.max(1).values > float("-inf"), sr.argmax(1), sp.argmax(1))
    io = torch.arange(K + 1, device=p.device)[None, :]
    draft_pad = torch.cat([draft_tokens, draft_tokens.new_full((B, 1), -1)], 1)
    out = torch.where(io < j[:, None], draft_pad, torch.where(io == j[:, None], tok[:, None], -1))
    return j.to(torch.int32), out


def spec_verify_triton(draft_tokens, draft_lens, q, p, accept_noise, resample_noise, out=None, block_v=None):
    B, K = draft_tokens.shape
    V = p.shape[-1]
    assert q.shape == (B, K, V) and p.shape == (B, K + 1, V) and resample_noise.shape == (B, V)
    acc_len, toks = (torch.empty(B, dtype=torch.int32, device=p.device),
                     torch.empty(B, K + 1, dtype=torch.int64, device=p.device)) if out is None else out
    if B:
        launch(
            _spec_verify_kernel, (B,), draft_tokens, draft_lens, q, p, accept_noise, resample_noise, acc_len, toks,
            *draft_tokens.stride(), *q.stride(), *p.stride(), *accept_noise.stride(), *resample_noise.stride(),
            *toks.stride(), K, V, BLOCK_K=next_pow2(K), BLOCK_V=block_v or min(2048, next_pow2(V)),
            num_warps=4,
        )
    return acc_len, toks


def spec_verify(draft_tokens, draft_lens, q, p, accept_noise, resample_noise):
    """draft_tokens [B,K] int64, draft_lens [B] int32, q [B,K,V], p [B,K+1,V] probabilities,
    accept_noise [B,K] U(0,1), resample_noise [B,V] Gumbel (make_noise) -> (accepted_len, out_tokens)."""
    same_device(p=p, q=q, draft_tokens=draft_tokens, draft_lens=draft_lens, accept_noise=accept_noise,
                resample_noise=resample_noise)
    if use_triton(p):
        return spec_verify_triton(draft_tokens, draft_lens, q, p, accept_noise, resample_noise)
    return spec_verify_ref(draft_tokens, draft_lens, q, p, accept_noise, resample_noise)
