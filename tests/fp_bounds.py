"""Rounding-error bounds for the kernel tests, derived from how each computation is structured, so a
tolerance holds on any machine (AVX-512, AVX2, scalar, GPU) instead of on the one it was tuned on.

Conventions: u = 2^-24 (float32 unit roundoff); first-order bounds (n*u << 1 everywhere here).
A summation of nonnegative terms in which no term passes through more than h additions has relative
error <= h*u in any order (Higham, Accuracy and Stability of Numerical Algorithms, 2nd ed., 4.2), so
  - torch on CPU (vectorised, order depends on the SIMD width and threads): h = n - 1, any order;
  - a Triton kernel that accumulates C chunks per lane, then reduces L lanes: h = (C - 1) + (L - 1)
    (the lane reduction in any order: numpy's pairwise sum, a GPU tree, a sequential loop alike).
exp and log: within 4 ulp (libm, SLEEF, numpy, and PTX's approximate ex2/lg2 after scaling, which
are ~2 ulp); exp's argument x rounded to u*|x| adds u*|x| relative, doubled for the scaling by log2(e).
"""
from __future__ import annotations

import math

import torch

U32 = 2.0 ** -24


def _finite_range(z64: torch.Tensor) -> torch.Tensor:
    """max - min over the finite entries of each row (the spread exp's arguments can have)."""
    fin = torch.isfinite(z64)
    hi = torch.where(fin, z64, -math.inf).max(-1).values
    lo = torch.where(fin, z64, math.inf).min(-1).values
    return (hi - lo).clamp(min=0)


def chain_h(V: int, block: int | None = None) -> tuple[int, int]:
    """(h, online rescales) of a streaming reduction over V entries: `block` lanes, ceil(V/block)
    sequential chunks per lane; block=None: unknown order (torch), h = V - 1, no rescales."""
    if block is None:
        return V - 1, 0
    C = -(-V // block)
    return (C - 1) + (min(block, V) - 1), C


def lse_bound(z64: torch.Tensor, dz, h: int, rescales: int = 0) -> torch.Tensor:
    """Per row, a bound on |fp32 logsumexp(z) - logsumexp(z64)| for a computation that forms
    m = max z, S = sum exp(z - m) with at most h additions per term (and `rescales` online-softmax
    rescales per lane), then m + log S. z64: [B, V] float64 (the exact inputs); dz: bound on the
    fp32 z's own error, a number or [B, V].
      sum      h*u
      terms    (4 + 2*range)*u           exp to 4 ulp, its rounded argument z - m (|z - m| <= range)
      rescales (4*rescales + 2*range)*u  each rescale one exp; the max only grows, so the arguments
                                         of a lane's rescales add up to at most the range
      log, +m  (4*|log S| + 4 + |lse|)*u
      inputs   max dz                    S moves by at most exp(max dz) relative"""
    rng = _finite_range(z64)
    lse = torch.logsumexp(z64, -1)
    logS = lse - z64.max(-1).values
    dzmax = (torch.as_tensor(dz, dtype=torch.float64).expand_as(z64) * torch.isfinite(z64)).amax(-1)
    rel = h + 4 + 2 * rng + (4 * rescales + 2 * rng if rescales else 0)
    return (rel + 4 * logS.abs() + 4 + lse.abs()) * U32 + dzmax


def logsoftmax_bound(z64: torch.Tensor, dz, h: int, rescales: int = 0) -> torch.Tensor:
    """Per element, a bound on |fp32 (z - logsumexp z) - exact| (see lse_bound), -inf entries: 0."""
    lse = torch.logsumexp(z64, -1, keepdim=True)
    out = (z64 - lse).abs() * U32 + torch.as_tensor(dz, dtype=torch.float64) + lse_bound(z64, dz, h, rescales)[:, None]
    return torch.where(torch.isfinite(z64), out, 0.0)


def assert_within(got: torch.Tensor, want64: torch.Tensor, bound: torch.Tensor, what: str = "") -> None:
    """|got - want64| <= bound elementwise; -inf must match -inf exactly; no NaN."""
    got = got.detach().cpu().double()
    want64, bound = want64.cpu(), bound.cpu()
    assert not got.isnan().any(), f"{what}: NaN"
    inf = ~torch.isfinite(want64)
    assert torch.equal(got[inf], want64[inf]), f"{what}: infinite entries differ"
    err = (got - want64).abs().masked_fill(inf, 0.0)
    worst = (err - bound).argmax()
    assert bool((err <= bound).all()), (f"{what}: error {err.flatten()[worst]:.3g} > bound "
                                        f"{bound.expand_as(err).flatten()[worst]:.3g} at {int(worst)}")


def sampler_mass_eps(x: torch.Tensor, block_v: int, nb: int = 16) -> torch.Tensor:
    """Per row, a bound on the relative error (of the top-k set's total mass D) of every mass the
    Triton sampler compares in its top-p search (kernels/fused_sampling.py): the total (online
    softmax: per-lane chunks, then the lanes), p * total, and each bucket's suffix mass (bucket sums
    over chunks and lanes; _pick_bucket's total - cumsum + own over nb buckets, and `above` carried
    across at most 8 passes: 8 * (2*nb + 4) more). x: [B, V] scaled logits."""
    V = x.shape[-1]
    h, C = chain_h(V, block_v)
    rng = _finite_range(x.double())
    total = h + 4 + 2 * rng + 4 * C + 2 * rng + 4 + 2 * rng + 1
    bucket = h + 4 + 2 * rng + 8 * (2 * nb + 4)
    return (total + bucket) * U32


def nucleus_tokens(z, temperature, top_k, top_p, noise, eps) -> list[set[int]]:
    """Per row of z [B, V], every token the sampler's rule (argmax over x >= tau of x + noise, x = z / t)
    may give when its top-p search sees masses with relative error <= eps[b]: one for each value
    threshold whose upper-set mass lies within eps*D of top_p*D. Greedy rows (t <= 0): the argmax.
    Where eps is 0 this is the exact rule (one token)."""
    B, V = z.shape
    z = z.detach().cpu().float()
    t = torch.as_tensor(temperature, dtype=torch.float32).expand(B)
    k = torch.as_tensor(top_k).expand(B)
    p = torch.as_tensor(top_p, dtype=torch.float32).expand(B)
    eps = torch.as_tensor(eps, dtype=torch.float64).expand(B)
    out = []
    for b in range(B):
        if t[b] <= 0:
            out.append({int(z[b].argmax())})
            continue
        x = z[b] / t[b]  # IEEE division, as kernel and reference do it
        sc = (x + noise[b].cpu()) if noise is not None else x
        xs, order = torch.sort(x, descending=True, stable=True)
        kb = int(k[b])
        tau_k = float(xs[kb - 1]) if 0 < kb < V else -math.inf
        if float(p[b]) >= 1:
            taus_from = taus_to = None
        else:
            w = torch.exp(xs.double() - float(xs[0])) * (xs >= tau_k)
            D, c = float(w.sum()), torch.cumsum(w, 0)
            lo = min(int((c < (float(p[b]) - float(eps[b])) * D).sum()), V - 1)
            hi = min(int((c < (float(p[b]) + float(eps[b])) * D).sum()), V - 1)
            taus_from, taus_to = float(xs[lo]), float(xs[hi])
        if taus_from is None:
            out.append({int(torch.where(x >= tau_k, sc, -math.inf).argmax())})
            continue
        # Kept sets are nested as the threshold falls: walk the candidates in sorted order, noting the
        # best token at the end of each tie group (a threshold keeps whole tie groups).
        hi_tau = max(taus_from, tau_k)
        best = int(torch.where(x >= hi_tau, sc, -math.inf).argmax())
        toks = {best}
        j = int((xs >= hi_tau).sum())
        while j < V and float(xs[j]) >= max(taus_to, tau_k):
            g = float(xs[j])
            while j < V and float(xs[j]) == g:
                i = int(order[j])
                if sc[i] > sc[best] or (sc[i] == sc[best] and i < best):
                    best = i
                j += 1
            toks.add(best)
        out.append(toks)
    return out


def attention64(q, k_cache, v_cache, block_tables, seq_lens, cu_seqlens_q, scale, *, rescales: int = 0,
                low_precision: bool = False):
    """Paged attention in float64 (docs/CONTRACTS.md semantics) and, per output element, a bound on the
    error of an fp32 computation of it (any order of the dot products and the key sums):
      logits   s_j = scale * q.k_j:  D*u * scale * sum_d |q_d k_jd|  +  2u|s_j|  (scale, log2(e) folded in)
      weights  P_j relative: 2 max|ds| + (L + 4 + 2 range + 1) u, and (4 rescales + 2 range) u for the
               online softmax's rescales (`rescales`: key blocks, splits and passes merged)
      output   o_d = sum_j P_j v_jd: (weights' error + L u) * sum_j P_j |v_jd|  +  u |o_d|
    low_precision (bf16/fp16 tensors): + 2^-7 * sum_j P_j |v_jd| (a GPU kernel rounds P to bf16 for its
    P.V product) + 2^-7 |o_d| (the output's rounding): one bf16 ulp, not half, because Triton's
    interpreter truncates fp32 -> bf16 where the GPU rounds to nearest. Returns (out64, bound), [T, Hq, D]."""
    q64 = q.detach().cpu().double()
    kc, vc = k_cache.detach().cpu().double(), v_cache.detach().cpu().double()
    T, Hq, D = q64.shape
    BS, Hkv = kc.shape[1], kc.shape[2]
    grp = Hq // Hkv
    out, bound = torch.zeros_like(q64), torch.zeros_like(q64)
    cu, lens, bt = cu_seqlens_q.cpu().tolist(), seq_lens.cpu().tolist(), block_tables.cpu().long()
    for b in range(len(lens)):
        L, s0, e0 = lens[b], cu[b], cu[b + 1]
        nb = -(-L // BS)
        K = kc[bt[b, :nb]].reshape(nb * BS, Hkv, D)[:L].repeat_interleave(grp, 1)   # [L, Hq, D]
        V = vc[bt[b, :nb]].reshape(nb * BS, Hkv, D)[:L].repeat_interleave(grp, 1)
        Q = q64[s0:e0]                                                              # [n, Hq, D]
        n = e0 - s0
        S = torch.einsum("qhd,lhd->hql", Q, K) * scale
        A = torch.einsum("qhd,lhd->hql", Q.abs(), K.abs()) * scale
        vis = torch.arange(L)[None, :] <= (L - n + torch.arange(n))[:, None]         # [n, L]
        S = S.masked_fill(~vis, -math.inf)
        P = torch.softmax(S, -1)
        ds = torch.where(vis, D * U32 * A + 2 * U32 * S.abs(), 0.0).amax(-1)         # [h, q]
        fin = torch.where(vis, S, math.inf).amin(-1)
        rng = S.amax(-1) - fin
        nvis = vis.sum(-1).double()[None, :]
        relP = 2 * ds + (nvis + 5 + 4 * rng + 4 * rescales) * U32
        o = torch.einsum("hql,lhd->qhd", P, V)
        Wv = torch.einsum("hql,lhd->qhd", P, V.abs())
        rel = (relP + nvis * U32).permute(1, 0)[..., None]                           # [q, h, 1]
        bd = rel * Wv + U32 * o.abs()
        if low_precision:
            bd = bd + 2.0 ** -7 * (Wv + o.abs())
        out[s0:e0], bound[s0:e0] = o, bd
    return out, bound
