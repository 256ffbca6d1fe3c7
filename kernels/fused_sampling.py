"""SLM+LLM distribution fusion and sampling, fused over the vocabulary for a batch of rows.

Fusion rules (per-row alpha `a`):
  "loglinear": logp = log_softmax((1-a)*log_softmax(slm) + a*log_softmax(llm))
               == log_softmax((1-a)*slm + a*llm)   (the per-row log-normalisers are constants)
  "proxy":     logp = log_softmax(llm + a*(slm - base))   (proxy tuning; base = the SLM's untuned base)
A weight that is exactly 0 drops its term, so -inf logits under a zero weight do not make NaN.

Sampling (per-row temperature t, top_k, top_p) with explicit noise g = Gumbel(0,1) [B, V]
(`make_noise`): x = z / t (IEEE division), keep = {x >= tau}, token = argmax_keep(x + g)
(Gumbel-max == exponential race: argmax pi(x) / E_x with E = exp(-g)). The argmax never needs the
normaliser, so fused logits z are used directly. t == 0 is greedy argmax(z) (first index on ties).
Truncation semantics (ties at a threshold are kept, HF order: top-k first, then top-p on the
renormalised top-k set): tau_k = k-th largest x (k <= 0 or k >= V: off); tau_p = the largest x-value
whose upper set {x >= tau_p} carries mass >= top_p (top_p >= 1: off; top_p <= 0 keeps the argmax).
Exact and not: the fused logits z, x = z / t, the top-k threshold and the draw are bit-identical in
kernel and reference (no FMA contraction, IEEE division, exact order-preserving keys). Top-p masses
are not: the reference sums float64 weights in a fixed order (nucleus_weights), the kernel float32
ones in its own order, so their nucleus edges may differ where a prefix mass lies within the kernel's
rounding bound of top_p * total; the tests accept exactly the tokens such an edge could give.
engine/sampling.py's CPU shortcut (keep_mask_topc) equals keep_mask_ref bit for bit (same float64
numbers, same order: nucleus_weights, nucleus_cut).

Passes over the row in the Triton kernel (each pass re-reads and re-fuses slm/llm[/base]):
  no truncation or greedy: 1 (the draw);  top-k: + 8 radix-select passes (16 buckets of the 32-bit
  order-preserving key per pass);  top-p: + 1 (max / mass of the kept set) + <= 8 bucket passes on mass.
One program per row (grid = B): rows are not split across SMs, so small batches use few SMs; rows
stay L2-resident across passes only while B * V * bytes fits in L2. noise=None means zero noise
(argmax of the truncated distribution).
"""
import torch
import triton
import triton.language as tl

from ._common import launch, launch_opts, next_pow2, row_param, same_device, use_triton

RULES = ("none", "loglinear", "proxy")
_COMPILED = {"enable_fp_fusion": False}  # what a compiled launch passes (launch_opts), for recorded launches
_KEY_NEG_INF = tl.constexpr(-2139095041)  # key(-inf): floats map to int32 keys with the same order
_KEY_POS_INF = tl.constexpr(2139095040)   # key(+inf)


def make_noise(B, V, generator=None, device=None):
    """Gumbel(0,1) noise [B, V] fp32 from a seeded generator: g = -log(E), E ~ Exp(1)."""
    gdev = generator.device if generator is not None else torch.device(device or "cpu")
    e = torch.empty(B, V, dtype=torch.float32, device=gdev).exponential_(generator=generator)
    return (-torch.log(e)).to(device or gdev)


# ----------------------------------------------------------------------------------------- Triton

@triton.jit
def _wmul(w, x):
    return w * tl.where(w == 0.0, 0.0, x)  # zero weight drops the term even where x is +-inf


@triton.jit
def _fused_z(slm_row, llm_row, base_row, offs, mask, a, s_sv, s_lv, s_bv, RULE: tl.constexpr):
    o = offs.to(tl.int64)
    s = tl.load(slm_row + o * s_sv, mask=mask, other=0.0).to(tl.float32)  # upcast right after the load
    if RULE == 0:
        z = s
    elif RULE == 1:
        l = tl.load(llm_row + o * s_lv, mask=mask, other=0.0).to(tl.float32)
        z = _wmul(1.0 - a, s) + _wmul(a, l)
    else:
        l = tl.load(llm_row + o * s_lv, mask=mask, other=0.0).to(tl.float32)
        bs = tl.load(base_row + o * s_bv, mask=mask, other=0.0).to(tl.float32)
        z = l + _wmul(a, s - bs)
    return tl.where(mask, z, float("-inf"))


@triton.jit
def _key(x):
    # Order-preserving float32 -> int32 map (negative floats: flip the 31 low bits), widened to int64.
    i = x.to(tl.int32, bitcast=True)
    return tl.where(i < 0, i ^ 0x7FFFFFFF, i).to(tl.int64)


@triton.jit
def _unkey(k):
    i = k.to(tl.int32)
    return tl.where(i < 0, i ^ 0x7FFFFFFF, i).to(tl.float32, bitcast=True)


@triton.jit
def _pick_bucket(vals, above, target, bins):
    # Highest non-empty-suffix bucket j whose suffix total (plus all above the range) reaches target
    # (> 0 too: top_p = 0 must still keep the max, whose mass exp(0) = 1).
    suffix = above + tl.sum(vals, 0) - tl.cumsum(vals, 0) + vals
    j = tl.max(tl.where((suffix >= target) & (suffix > 0), bins, -1), 0)
    j = tl.maximum(j, 0)  # rounding guard for the mass search; the count search always has j >= 0
    return j, above + tl.sum(tl.where(bins > j, vals, 0), 0)


@triton.jit
def _fused_sample_kernel(
    slm_ptr, llm_ptr, base_ptr, s_sb, s_sv, s_lb, s_lv, s_bb, s_bv,
    alpha_ptr, temp_ptr, topk_ptr, topp_ptr, noise_ptr, s_nb, s_nv, out_ptr, V,
    RULE: tl.constexpr, HAS_NOISE: tl.constexpr, BLOCK_V: tl.constexpr, NB: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    slm_row = slm_ptr + row * s_sb
    llm_row = llm_ptr + row * s_lb
    base_row = base_ptr + row * s_bb
    a = tl.load(alpha_ptr + row)
    t = tl.load(temp_ptr + row)
    k = tl.load(topk_ptr + row)
    p = tl.load(topp_ptr + row)
    greedy = t <= 0.0
    sampling = t > 0.0
    t = tl.where(greedy, 1.0, t)  # z / 1 == z exactly
    ar = tl.arange(0, BLOCK_V)
    bins = tl.arange(0, NB)
    tau = tl.full([], float("-inf"), tl.float32)

    if (k > 0) & (k < V) & sampling:
        # Top-k: radix select of the k-th largest key, 16 buckets (4 bits) per pass over the row.
        lo = tl.full([], _KEY_NEG_INF, tl.int64)
        hi = tl.full([], _KEY_POS_INF + 1, tl.int64)
        above = tl.zeros([], tl.int32)
        while hi - lo > 1:
            bw = (hi - lo + NB - 1) // NB
            cnt = tl.zeros([NB], tl.int32)
            for start in range(0, V, BLOCK_V):
                offs = start + ar
                mask = offs < V
                z = _fused_z(slm_row, llm_row, base_row, offs, mask, a, s_sv, s_lv, s_bv, RULE)
                key = _key(tl.math.div_rn(z, tl.zeros_like(z) + t))
                inr = mask & (key >= lo) & (key < hi)
                hit = (((key - lo) // bw)[:, None] == bins[None, :]) & inr[:, None]
                cnt += tl.sum(hit.to(tl.int32), 0)
            j, above = _pick_bucket(cnt, above, k, bins)
            lo = lo + j * bw
            hi = tl.minimum(lo + bw, hi)
        tau = _unkey(lo)

    if (p < 1.0) & sampling:
        # Top-p pass 1: max and total mass of the top-k set (per-lane online softmax statistics).
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        acc = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + ar
            mask = offs < V
            z = _fused_z(slm_row, llm_row, base_row, offs, mask, a, s_sv, s_lv, s_bv, RULE)
            x = tl.math.div_rn(z, tl.zeros_like(z) + t)
            x = tl.where(x >= tau, x, float("-inf"))
            m_new = tl.maximum(m, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
            acc = acc * tl.exp(m - m_safe) + tl.exp(x - m_safe)
            m = m_new
        mx = tl.max(m, 0)
        target = p * tl.sum(acc * tl.exp(m - mx), 0)
        # Then bucket passes on probability mass over keys in [key(tau_k), key(max)].
        lo = _key(tau)
        hi = _key(mx) + 1
        above_m = tl.zeros([], tl.float32)
        while hi - lo > 1:
            bw = (hi - lo + NB - 1) // NB
            msum = tl.zeros([NB], tl.float32)
            for start in range(0, V, BLOCK_V):
                offs = start + ar
                mask = offs < V
                z = _fused_z(slm_row, llm_row, base_row, offs, mask, a, s_sv, s_lv, s_bv, RULE)
                x = tl.math.div_rn(z, tl.zeros_like(z) + t)
                key = _key(x)
                inr = mask & (key >= lo) & (key < hi)
                e = tl.where(inr, tl.exp(x - mx), 0.0)
                hit = (((key - lo) // bw)[:, None] == bins[None, :]) & inr[:, None]
                msum += tl.sum(tl.where(hit, e[:, None], 0.0), 0)
            j, above_m = _pick_bucket(msum, above_m, target, bins)
            lo = lo + j * bw
            hi = tl.minimum(lo + bw, hi)
        tau = _unkey(lo)

    # The draw: argmax over the kept set of x + g (first index on ties, like torch.argmax).
    best_v = tl.full([], float("-inf"), tl.float32)
    best_i = tl.zeros([], tl.int64)
    for start in range(0, V, BLOCK_V):
        offs = start + ar
        mask = offs < V
        z = _fused_z(slm_row, llm_row, base_row, offs, mask, a, s_sv, s_lv, s_bv, RULE)
        x = tl.math.div_rn(z, tl.zeros_like(z) + t)
        if HAS_NOISE:
            g = tl.load(noise_ptr + row * s_nb + offs.to(tl.int64) * s_nv, mask=mask, other=0.0)
            sc = tl.where(greedy, x, x + g)
        else:
            sc = x
        sc = tl.where(mask & (x >= tau), sc, float("-inf"))
        v, i = tl.max(sc, 0, return_indices=True, return_indices_tie_break_left=True)
        upd = v > best_v
        best_i = tl.where(upd, start + i.to(tl.int64), best_i)
        best_v = tl.where(upd, v, best_v)
    tl.store(out_ptr + row, best_i)


@triton.jit
def _fuse_logprobs_kernel(
    slm_ptr, llm_ptr, base_ptr, s_sb, s_sv, s_lb, s_lv, s_bb, s_bv, alpha_ptr, out_ptr, s_ob, s_ov, V,
    RULE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    # Two passes: streaming logsumexp of the fused logits, then write z - lse.
    row = tl.program_id(0).to(tl.int64)
    slm_row = slm_ptr + row * s_sb
    llm_row = llm_ptr + row * s_lb
    base_row = base_ptr + row * s_bb
    a = tl.load(alpha_ptr + row)
    ar = tl.arange(0, BLOCK_V)
    m = tl.full([BLOCK_V], float("-inf"), tl.float32)
    acc = tl.zeros([BLOCK_V], tl.float32)
    for start in range(0, V, BLOCK_V):
        offs = start + ar
        z = _fused_z(slm_row, llm_row, base_row, offs, offs < V, a, s_sv, s_lv, s_bv, RULE)
        m_new = tl.maximum(m, z)
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        acc = acc * tl.exp(m - m_safe) + tl.exp(z - m_safe)
        m = m_new
    mx = tl.max(m, 0)
    lse = mx + tl.log(tl.sum(acc * tl.exp(m - mx), 0))
    for start in range(0, V, BLOCK_V):
        offs = start + ar
        mask = offs < V
        z = _fused_z(slm_row, llm_row, base_row, offs, mask, a, s_sv, s_lv, s_bv, RULE)
        tl.store(out_ptr + row * s_ob + offs.to(tl.int64) * s_ov, z - lse, mask=mask)


def _rule_args(slm, llm, rule, base):
    assert rule in RULES, rule
    if rule == "proxy":
        assert base is not None, "proxy fusion needs base_logits (the SLM's untuned base model)"
    llm = slm if llm is None else llm
    base = slm if base is None else base
    return slm, llm, base, RULES.index(rule)


def _block_v(V):
    return min(1024, max(16, next_pow2(V)))


def fuse_logprobs_triton(slm_logits, llm_logits, alpha, rule="loglinear", base_logits=None, out=None, block_v=None):
    B, V = slm_logits.shape
    slm, llm, base, r = _rule_args(slm_logits, llm_logits, rule, base_logits)
    a = row_param(alpha, B, torch.float32, slm.device)
    out = torch.empty(B, V, dtype=torch.float32, device=slm.device) if out is None else out
    if B:
        launch(_fuse_logprobs_kernel, (B,), slm, llm, base, *slm.stride(), *llm.stride(), *base.stride(), a,
                                    out, *out.stride(), V, RULE=r, BLOCK_V=block_v or _block_v(V), num_warps=8,
                                    **launch_opts(slm.device), compiled=_COMPILED)
    return out


def fused_sample_triton(slm_logits, llm_logits, alpha, rule, temperature, top_k, top_p, noise,
                        base_logits=None, out=None, block_v=None):
    B, V = slm_logits.shape
    slm, llm, base, r = _rule_args(slm_logits, llm_logits, rule, base_logits)
    dev = slm.device
    a = row_param(alpha, B, torch.float32, dev)
    t = row_param(temperature, B, torch.float32, dev)
    k = row_param(top_k, B, torch.int32, dev)
    p = row_param(top_p, B, torch.float32, dev)
    out = torch.empty(B, dtype=torch.int64, device=dev) if out is None else out
    nz = noise if noise is not None else slm
    if B:
        launch(_fused_sample_kernel, (B,), slm, llm, base, *slm.stride(), *llm.stride(), *base.stride(),
                                   a, t, k, p, nz, *nz.stride(), out, V,
                                   RULE=r, HAS_NOISE=noise is not None, BLOCK_V=block_v or _block_v(V), NB=16,
                                   num_warps=8, **launch_opts(dev), compiled=_COMPILED)
    return out


# -------------------------------------------------------------------------------------- reference

def _wmul_ref(w, x):
    return w * torch.where(w == 0, torch.zeros_like(x), x)


def fused_logits_ref(slm_logits, llm_logits, alpha, rule="loglinear", base_logits=None):
    """Unnormalised fused logits z (log_softmax(z) is the fused distribution), fp32, same op order as the kernel."""
    slm, llm, base, _ = _rule_args(slm_logits, llm_logits, rule, base_logits)
    s = slm.float()
    if rule == "none":
        return s
    a = row_param(alpha, s.shape[0], torch.float32, s.device)[:, None]
    if rule == "loglinear":
        return _wmul_ref(1 - a, s) + _wmul_ref(a, llm.float())
    return llm.float() + _wmul_ref(a, s - base.float())


def fuse_logprobs_ref(slm_logits, llm_logits, alpha, rule="loglinear", base_logits=None):
    """Reference, literally the definitions in the module docstring."""
    B = slm_logits.shape[0]
    a = row_param(alpha, B, torch.float32, slm_logits.device)[:, None]
    if rule == "loglinear":
        ls = torch.log_softmax(slm_logits.float(), -1)
        ll = torch.log_softmax(llm_logits.float(), -1)
        return torch.log_softmax(_wmul_ref(1 - a, ls) + _wmul_ref(a, ll), -1)
    assert rule == "proxy" and base_logits is not None
    return torch.log_softmax(llm_logits.float() + _wmul_ref(a, slm_logits.float() - base_logits.float()), -1)


def nucleus_weights(x, m, tau_k):
    """The top-p rule's masses, float64, shared by keep_mask_ref and gboost.sampling.keep_mask_topc so both
    compare the same numbers: w = exp(x - m) (m: the row max) on the top-k set (x >= tau_k), 0 elsewhere, and the
    set's mass D as a sequential sum in index order (CPU cumsum is a per-row loop: the same D whatever
    the batch shape or thread count, unlike a parallel reduction)."""
    m = m.double()
    w = x.double().sub_(torch.where(torch.isfinite(m), m, 0.0)[:, None]).exp_()
    if bool(torch.isfinite(tau_k).any()):
        w.masked_fill_(x < tau_k[:, None], 0.0)
    return w, torch.cumsum(w, -1)[:, -1]


def nucleus_cut(ws, D, p):
    """First position whose prefix mass reaches top_p * D. ws: the weights in canonical sorted order
    (value descending, index ascending among ties); the prefix is a sequential cumsum, so a top-C
    window's prefixes are the full sort's first C prefixes, bit for bit."""
    return (torch.cumsum(ws, -1) < p.double()[:, None] * D[:, None]).sum(-1)


def keep_full_sort(x, k, p, w=None, D=None):
    B, V = x.shape
    xs, order = torch.sort(x, dim=-1, descending=True, stable=True)
    do_k = (k > 0) & (k < V)
    tau_k = torch.where(do_k, xs.gather(1, (k.clamp(1, V) - 1)[:, None])[:, 0], float("-inf"))
    if w is None:
        w, D = nucleus_weights(x, xs[:, 0], tau_k)
    first = nucleus_cut(w.gather(1, order), D, p).clamp(max=V - 1)  # first index reaching top_p
    tau_p = torch.where(p < 1, xs.gather(1, first[:, None])[:, 0], float("-inf"))
    return x >= torch.maximum(tau_k, tau_p)[:, None]


def keep_mask_ref(x, top_k, top_p):
    """Kept set of the scaled logits x [B, V] (full sort + prefix masses, the textbook procedure; ties
    kept). Masses are float64 (nucleus_weights), the cut is value-based: tau_p = the largest x-value
    whose upper set carries mass >= top_p."""
    B, V = x.shape
    k = row_param(top_k, B, torch.int64, x.device)
    p = row_param(top_p, B, torch.float32, x.device)
    if not bool((((k > 0) & (k < V)) | (p < 1)).any()):
        return torch.ones_like(x, dtype=torch.bool)  # no truncation anywhere: skip the O(V log V) sort
    return keep_full_sort(x, k, p)


def sample_ref(logits, temperature, top_k=0, top_p=1.0, noise=None):
    B, V = logits.shape
    z = logits.float()
    t = row_param(temperature, B, torch.float32, z.device)
    greedy = t <= 0
    x = z / torch.where(greedy, 1.0, t)[:, None]
    keep = keep_mask_ref(x, torch.where(greedy, 0, row_param(top_k, B, torch.int64, z.device)),
                         torch.where(greedy, 1.0, row_param(top_p, B, torch.float32, z.device)))
    sc = x if noise is None else torch.where(greedy[:, None], x, x + noise)
    return torch.where(keep, sc, float("-inf")).argmax(-1)


def fused_sample_ref(slm_logits, llm_logits, alpha, rule, temperature, top_k, top_p, noise, base_logits=None):
    z = fused_logits_ref(slm_logits, llm_logits, alpha, rule, base_logits)
    return sample_ref(z, temperature, top_k, top_p, noise)


# ------------------------------------------------------------------------------------ dispatchers

def fuse_logprobs(slm_logits, llm_logits, alpha, rule="loglinear", base_logits=None):
    """slm/llm_logits [B, V], alpha float | [B] -> fused log-probabilities [B, V] fp32."""
    same_device(slm_logits=slm_logits, llm_logits=llm_logits, base_logits=base_logits)
    if use_triton(slm_logits):
        return fuse_logprobs_triton(slm_logits, llm_logits, alpha, rule, base_logits)
    return fuse_logprobs_ref(slm_logits, llm_logits, alpha, rule, base_logits)


def sample(logits_or_logp, temperature, top_k=0, top_p=1.0, noise=None):
    """[B, V] logits or log-probs -> tokens [B] int64. noise: make_noise(B, V, gen) (None = no noise)."""
    same_device(logits=logits_or_logp, noise=noise)
    if use_triton(logits_or_logp):
        return fused_sample_triton(logits_or_logp, None, 0.0, "none", temperature, top_k, top_p, noise)
    return sample_ref(logits_or_logp, temperature, top_k, top_p, noise)


def fused_sample(slm_logits, llm_logits, alpha, rule, temperature, top_k, top_p, noise, base_logits=None):
    """Fuse (rule, alpha) and sample in one launch -> tokens [B] int64 (see module docstring)."""
    same_device(slm_logits=slm_logits, llm_logits=llm_logits, noise=noise, base_logits=base_logits)
    if use_triton(slm_logits):
        return fused_sample_triton(slm_logits, llm_logits, alpha, rule, temperature, top_k, top_p, noise, base_logits)
    return fused_sample_ref(slm_logits, llm_logits, alpha, rule, temperature, top_k, top_p, noise, base_logits)
