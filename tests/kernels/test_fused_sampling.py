import pytest
import torch

from fp_bounds import U32, assert_within, chain_h, logsoftmax_bound, nucleus_tokens, sampler_mass_eps
from gboost.kernels.fused_sampling import (_block_v, fuse_logprobs, fuse_logprobs_ref, fuse_logprobs_triton, fused_logits_ref,
                                    fused_sample, fused_sample_ref, fused_sample_triton, keep_mask_ref, make_noise,
                                    sample, sample_ref)
from sampling_cases import exact_dist as _exact_dist, logits as _logits, row_params as _row_params


def _fused64(slm, llm, alpha, rule, base=None):
    """The fused logits in float64 from the same (fp32-exact) inputs, and a bound on the error of the
    fp32 z the kernel and fused_logits_ref form: <= 3 roundings of terms of size |s|, |l|, |b| (alpha in [0, 1])."""
    s, l = slm.double().cpu(), llm.double().cpu()
    a = torch.as_tensor(alpha, dtype=torch.float32).double().cpu().expand(s.shape[0])[:, None]
    w = lambda c, x: c * torch.where(c == 0, 0.0, x)  # noqa: E731 -- zero weight drops the term (fused_sampling._wmul)
    if rule == "loglinear":
        z = w(1 - a, s) + w(a, l)
        dz = 4 * U32 * (s.abs() + l.abs())
    else:
        b = base.double().cpu()
        z = l + w(a, s - b)
        dz = 4 * U32 * (s.abs() + l.abs() + b.abs())
    return z, torch.where(torch.isfinite(dz), dz, 0.0)


@pytest.mark.parametrize("rule", ["loglinear", "proxy"])
@pytest.mark.parametrize("B,V,dtype", [(17, 1000, torch.float32), (3, 1000, torch.bfloat16), (1, 151936, torch.bfloat16)])
def test_fuse_logprobs_matches_ref(device, rule, B, V, dtype):
    # Kernel and reference each against float64, within the bound of how each sums (tests/fp_bounds.py).
    slm, llm, base = _logits(B, V, seed=V + B, dtype=dtype, device=device)
    alpha = _row_params(B, V, 0)[0].to(device)
    slm[0, :7] = float("-inf")  # row 0 has alpha 0: -inf SLM logits under weight 0 must not give NaN
    out = torch.full((B, V), float("nan"), device=device)
    block_v = 256 if V == 1000 else _block_v(V)
    fuse_logprobs_triton(slm, llm, alpha, rule, base, out=out, block_v=block_v)
    ref = fuse_logprobs_ref(slm, llm, alpha, rule, base)
    z64, dz = _fused64(slm, llm, alpha, rule, base)
    want = torch.log_softmax(z64, -1)
    assert_within(out, want, logsoftmax_bound(z64, dz, *chain_h(V, block_v)), "kernel")
    if rule == "loglinear":
        # the reference fuses log_softmax(slm) and log_softmax(llm) (torch, any order), then normalises again
        s64, l64 = slm.double().cpu(), llm.double().cpu()
        a = alpha.double().cpu()[:, None]
        e_s = logsoftmax_bound(s64, 0.0, V - 1)
        e_l = logsoftmax_bound(l64, 0.0, V - 1)
        ls, ll = torch.log_softmax(s64, -1), torch.log_softmax(l64, -1)
        dz_ref = (1 - a) * e_s + a * e_l + 4 * U32 * ((1 - a) * ls.abs().nan_to_num(0, 0, 0) + a * ll.abs())
    else:
        dz_ref = dz
    assert_within(ref, want, logsoftmax_bound(z64, dz_ref, V - 1), "reference")


def test_fused_logits_ref_is_the_fused_distribution():
    # log_softmax of the kernels' unnormalised z equals the spec formulas (the sampler relies on this),
    # each fp32 computation within its rounding bound of the float64 spec.
    slm, llm, base = _logits(5, 300, seed=2, scale=5.0)
    V = 300
    a = torch.tensor([0.0, 0.3, 0.5, 0.9, 1.0])
    for rule in ["loglinear", "proxy"]:
        z64, dz = _fused64(slm, llm, a, rule, base)
        assert_within(torch.log_softmax(fused_logits_ref(slm, llm, a, rule, base), -1), torch.log_softmax(z64, -1),
                      logsoftmax_bound(z64, dz, V - 1), rule)
    spec = torch.log_softmax(0.7 * torch.log_softmax(slm.double(), -1) + 0.3 * torch.log_softmax(llm.double(), -1), -1)
    e = 0.7 * logsoftmax_bound(slm.double(), 0.0, V - 1) + 0.3 * logsoftmax_bound(llm.double(), 0.0, V - 1) \
        + 4 * U32 * (torch.log_softmax(slm.double(), -1).abs() + torch.log_softmax(llm.double(), -1).abs())
    assert_within(fuse_logprobs_ref(slm, llm, 0.3, "loglinear"), spec, logsoftmax_bound(spec, e, V - 1), "loglinear spec")
    proxy = torch.log_softmax(llm.double() + 0.3 * (slm.double() - base.double()), -1)
    z64, dz = _fused64(slm, llm, 0.3, "proxy", base)
    assert_within(fuse_logprobs_ref(slm, llm, 0.3, "proxy", base), proxy, logsoftmax_bound(z64, dz, V - 1), "proxy spec")


def _check_tokens(out, slm, llm, alpha, rule, temp, ks, ps, noise, base, block_v):
    """The kernel's tokens against the rule with float64 masses: exact, except that a top-p edge may
    move where a prefix mass lies within the kernel's fp32 rounding bound (fp_bounds.sampler_mass_eps);
    the reference's own token must be the exact rule's."""
    z = fused_logits_ref(slm, llm, alpha, rule, base).cpu()
    B = z.shape[0]
    t = torch.as_tensor(temp, dtype=torch.float32).cpu().expand(B)
    x = z / torch.where(t > 0, t, 1.0)[:, None]
    eps = sampler_mass_eps(x, block_v)
    exact = nucleus_tokens(z, t, torch.as_tensor(ks).cpu(), torch.as_tensor(ps).cpu(), noise.cpu() if noise is not None
                           else None, 0.0)
    allowed = nucleus_tokens(z, t, torch.as_tensor(ks).cpu(), torch.as_tensor(ps).cpu(), noise.cpu() if noise is not None
                             else None, eps)
    ref = fused_sample_ref(slm, llm, alpha, rule, temp, ks, ps, noise, base).tolist()
    assert [{r} for r in ref] == exact, (ref, exact)
    got = out.tolist()
    assert all(g in a for g, a in zip(got, allowed)), (got, allowed)
    return sum(len(a) > 1 for a in allowed)


@pytest.mark.parametrize("rule", ["none", "loglinear", "proxy"])
@pytest.mark.parametrize("B,V,ties,dtype", [(17, 1000, False, torch.float32), (17, 1000, True, torch.float32),
                                            (4, 1000, False, torch.bfloat16), (1, 37, False, torch.float32)])
def test_fused_sample_bit_identical_to_ref(device, rule, B, V, ties, dtype):
    slm, llm, base = _logits(B, V, seed=B * V + ties, dtype=dtype, device=device, ties=ties)
    alpha, temp, ks, ps = (t.to(device) for t in _row_params(B, V, 1))
    noise = make_noise(B, V, torch.Generator().manual_seed(B + V)).to(device)
    out = torch.full((B,), -1, dtype=torch.int64, device=device)
    block_v = 256 if V > 256 else _block_v(V)
    fused_sample_triton(slm, llm, alpha, rule, temp, ks, ps, noise, base, out=out, block_v=block_v)
    assert (out >= 0).all() and (out < V).all()
    # bit-identical where no top-p edge is within rounding; at most a few rows of 17 can be near one
    assert _check_tokens(out, slm, llm, alpha, rule, temp, ks, ps, noise, base, block_v) <= 2


def test_fused_sample_big_vocab_b1(device):
    V = 151936
    slm, llm, base = _logits(1, V, seed=7, dtype=torch.bfloat16, device=device)
    noise = make_noise(1, V, torch.Generator().manual_seed(3)).to(device)
    for k, p in [(40, 0.9), (0, 0.95)]:
        # Big tiles keep the interpreter's chunk count (and the test) short; compiled runs use the default.
        block_v = 16384 if device.type == "cpu" else _block_v(V)
        out = fused_sample_triton(slm, llm, 0.4, "loglinear", 0.8, k, p, noise, block_v=block_v)
        _check_tokens(out, slm, llm, 0.4, "loglinear", 0.8, k, p, noise, None, block_v)


def test_greedy_and_dispatch(device, monkeypatch):
    slm, llm, _ = _logits(6, 500, seed=11, ties=True, device=device)
    slm[:, [3, 300, 301]] = 50.0  # exact ties for the max, in different 128-wide chunks
    llm[:, [3, 300, 301]] = 50.0
    slm[1, 3] = 0.0  # row 1: the tie is inside one chunk (300 vs 301)
    z = fused_logits_ref(slm, llm, 0.25, "loglinear")
    want = z.argmax(-1)  # first index of the max
    noise = make_noise(6, 500, torch.Generator().manual_seed(0)).to(device)
    monkeypatch.delenv("GBOOST_FORCE_TRITON", raising=False)
    assert fused_sample(slm, llm, 0.25, "loglinear", 0.0, 5, 0.5, noise).tolist() == want.tolist()
    monkeypatch.setenv("GBOOST_FORCE_TRITON", "1")
    assert fused_sample(slm, llm, 0.25, "loglinear", 0.0, 5, 0.5, noise).tolist() == want.tolist()
    assert sample(z, 0.0, 0, 1.0, None).tolist() == want.tolist()
    assert want.tolist() == [3, 300, 3, 3, 3, 3]
    assert fused_sample_triton(slm, llm, 0.25, "loglinear", 0.0, 0, 1.0, None, block_v=128).tolist() == want.tolist()
    lp = fuse_logprobs(slm, llm, 0.25, "loglinear")
    assert sample(lp, 1.0, 0, 1.0, noise).tolist() == sample_ref(lp, 1.0, 0, 1.0, noise).tolist()


def test_keep_mask_ref_semantics():
    x = torch.tensor([[3.0, 1.0, 2.0, 2.0, 0.0]])
    assert keep_mask_ref(x, 2, 1.0).tolist() == [[True, False, True, True, False]]  # ties at the k-th kept
    assert keep_mask_ref(x, 0, 0.0).tolist() == [[True, False, False, False, False]]
    p = torch.softmax(x, -1)[0]
    assert keep_mask_ref(x, 0, float(p[0]) - 1e-4).tolist() == [[True, False, False, False, False]]
    assert keep_mask_ref(x, 0, float(p[0]) + 1e-4).tolist() == [[True, False, True, True, False]]
    assert keep_mask_ref(x, 1, 0.9).tolist() == [[True, False, False, False, False]]


@pytest.mark.parametrize("rule,t,k,p", [("loglinear", 1.0, 0, 1.0), ("loglinear", 0.7, 20, 0.9), ("proxy", 1.3, 0, 0.8)])
def test_sampler_frequencies_match_exact_distribution(rule, t, k, p):
    # 200k draws through the reference path (the kernel equals it bit for bit on the same noise, above).
    V, N = 50, 200_000
    slm, llm, base = _logits(1, V, seed=5, scale=1.5)
    z = fused_logits_ref(slm, llm, 0.6, rule, base)[0]
    exact = _exact_dist(z, t, k, p)
    gen = torch.Generator().manual_seed(42)
    rep = lambda x: x.expand(N, V)
    toks = fused_sample_ref(rep(slm), rep(llm), 0.6, rule, t, k, p, make_noise(N, V, gen), rep(base))
    freq = torch.bincount(toks, minlength=V).double() / N
    tv = 0.5 * (freq - exact).abs().sum().item()
    assert tv < 0.01
    if k or p < 1:  # the truncation is visible at this sample size: a sampler ignoring it would fail
        full = torch.softmax(z.double() / t, 0)
        assert 0.5 * (freq - full).abs().sum().item() > 0.03
    # The same noise through the kernel on a slice of the draws (interpreted here, compiled on a GPU box).
    n, dev = 16, "cuda" if torch.cuda.is_available() else "cpu"
    nz = make_noise(n, V, torch.Generator().manual_seed(9)).to(dev)
    sl, ll, bl = (rep(x)[:n].to(dev) for x in (slm, llm, base))
    kt = fused_sample_triton(sl, ll, 0.6, rule, t, k, p, nz, bl)
    _check_tokens(kt, sl, ll, 0.6, rule, t, k, p, nz, bl, _block_v(V))


def test_make_noise_is_gumbel_and_seeded():
    a = make_noise(400, 500, torch.Generator().manual_seed(1))
    b = make_noise(400, 500, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert abs(a.mean().item() - 0.5772) < 0.01 and abs(a.var().item() - torch.pi ** 2 / 6) < 0.03
