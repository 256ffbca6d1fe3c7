"""Kernel benchmarks: Triton vs the PyTorch reference vs the usual torch alternative, at real shapes.

Qwen2.5-0.5B: 14 q heads / 2 kv heads / head dim 64; 1.5B: 12 / 2 / 128; vocab 151936; batch 1..64.
GPU cases skip without CUDA; `test_cpu_*` time the references at small shapes on any machine.
GB/s = compulsory bytes (each input read once, each output written once) / median time; for the
multi-pass sampler that is an *effective* bandwidth (it re-reads the row per pass).
Run: pytest benchmarks/ --benchmark-columns=median,rounds  (timings + GB/s in a table at the end).
"""
import pytest
import torch
import torch.nn.functional as F

from gboost.kernels.fused_sampling import (fuse_logprobs_ref, fuse_logprobs_triton, fused_logits_ref, fused_sample_ref,
                                    fused_sample_triton, make_noise)
from gboost.kernels.kv_write import store_kv_ref, store_kv_triton
from gboost.kernels.paged_attention import paged_attention_ref, paged_attention_triton
from gboost.kernels.spec_verify import spec_verify_ref, spec_verify_triton
from gboost.kernels.step_scoring import step_rewards_ref, step_rewards_triton
from gboost.kernels.weight_only import dequantize, pack_int4, wo_matmul_triton

HAS_CUDA = torch.cuda.is_available()
cuda_only = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA (compiled Triton kernels)")
MODELS = {"0.5b": (14, 2, 64), "1.5b": (12, 2, 128)}
VOCAB = 151936
BF16 = torch.bfloat16


def _paged(B, Hq, Hkv, D, ctx, qlen, device, BS=16, dtype=BF16):
    L = ctx + qlen
    nb = -(-L // BS)
    g = torch.Generator(device=device).manual_seed(0)
    pool = torch.randn(B * nb, 2 * BS * Hkv * D, generator=g, device=device).to(dtype)  # one layer's pages
    kv = pool.view(B * nb, 1, 2, BS, Hkv, D)
    bt = torch.randperm(B * nb, generator=g, device=device).view(B, nb).int()  # scattered pages
    q = torch.randn(B * qlen, Hq, D, generator=g, device=device).to(dtype)
    cu = (torch.arange(B + 1, device=device) * qlen).int()
    sl = torch.full((B,), L, dtype=torch.int32, device=device)
    return q, kv[:, 0, 0], kv[:, 0, 1], bt, sl, cu


def _attn_bytes(q, B, L, Hkv, D, elem=2):
    return 2 * B * L * Hkv * D * elem + 2 * q.numel() * elem


# ------------------------------------------------------------------------------- the ceiling

@cuda_only
def test_device_copy(bench):
    # The memory-bandwidth ceiling the kernels' GB/s are read against (conftest's summary prints each
    # row as a share of it): a 1 GiB device-to-device copy, bytes read plus bytes written.
    x = torch.randn(1 << 28, device="cuda")  # 1 GiB of fp32, random (not zeros)
    y = torch.empty_like(x)
    bench(lambda: y.copy_(x), 2 * x.numel() * 4)


# ------------------------------------------------------------------------------- paged attention

@cuda_only
@pytest.mark.parametrize("impl", ["triton", "triton_nosplit", "torch_sdpa", "ref"])
@pytest.mark.parametrize("ctx", [1024, 4096])
@pytest.mark.parametrize("B", [1, 16, 64])
@pytest.mark.parametrize("model", list(MODELS))
def test_paged_attention_decode(bench, model, B, ctx, impl):
    _attention_case(bench, model, B, ctx, 1, impl)


@cuda_only
@pytest.mark.parametrize("impl", ["triton", "torch_sdpa", "ref"])
@pytest.mark.parametrize("B", [4, 16])
@pytest.mark.parametrize("model", list(MODELS))
def test_paged_attention_extend8(bench, model, B, impl):
    _attention_case(bench, model, B, 2048, 8, impl)


def _attention_case(bench, model, B, ctx, qlen, impl):
    Hq, Hkv, D = MODELS[model]
    if impl == "ref" and B * ctx > 16 * 4096:
        pytest.skip("reference loop: timed at the smaller shapes only")
    q, kc, vc, bt, sl, cu = _paged(B, Hq, Hkv, D, ctx, qlen, "cuda")
    L, scale = ctx + qlen, D ** -0.5
    nbytes = _attn_bytes(q, B, L, Hkv, D)
    if impl == "triton":
        out = paged_attention_triton(q, kc, vc, bt, sl, cu, scale)
        if B <= 16:  # sanity at real shapes before timing
            torch.testing.assert_close(out.float(), paged_attention_ref(q, kc, vc, bt, sl, cu, scale).float(),
                                       atol=2e-2, rtol=2e-2)
        bench(lambda: paged_attention_triton(q, kc, vc, bt, sl, cu, scale), nbytes)
    elif impl == "triton_nosplit":  # flash-decoding split-KV off: one program per (tile, kv head)
        bench(lambda: paged_attention_triton(q, kc, vc, bt, sl, cu, scale, num_splits=1), nbytes)
    elif impl == "ref":
        bench(lambda: paged_attention_ref(q, kc, vc, bt, sl, cu, scale), nbytes)
    else:
        # The best case for SDPA: K/V already contiguous per sequence (no paging), GQA native.
        K = kc[bt.long()].reshape(B, -1, Hkv, D)[:, :L].transpose(1, 2).contiguous()
        V = vc[bt.long()].reshape(B, -1, Hkv, D)[:, :L].transpose(1, 2).contiguous()
        qq = q.view(B, qlen, Hq, D).transpose(1, 2)
        mask = None if qlen == 1 else torch.ones(qlen, L, dtype=torch.bool, device="cuda").tril(L - qlen)
        bench(lambda: F.scaled_dot_product_attention(qq, K, V, attn_mask=mask, scale=scale, enable_gqa=True), nbytes)


# ------------------------------------------------------------------------------------- store_kv

@cuda_only
@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("T", [64, 8192])
def test_store_kv(bench, T, impl):
    _, Hkv, D = MODELS["1.5b"]
    NB, BS = T // 16 + 8, 16
    kc = torch.zeros(NB, BS, Hkv, D, dtype=BF16, device="cuda")
    vc = torch.zeros_like(kc)
    k = torch.randn(T, Hkv, D, device="cuda").to(BF16)
    slots = torch.randperm(NB * BS, device="cuda")[:T]
    fn = store_kv_triton if impl == "triton" else store_kv_ref
    bench(lambda: fn(k, k, kc, vc, slots), 4 * k.numel() * 2)


# ------------------------------------------------------------------------------ fusion / sampling

def _logits(B, V, device, dtype=BF16):
    g = torch.Generator(device=device).manual_seed(1)
    return [(torch.randn(B, V, generator=g, device=device) * 3).to(dtype) for _ in range(2)]


def _torch_conventional(slm, llm, alpha, temperature, top_k, top_p, gen):
    # What one writes in plain torch: log-softmax fusion, sort-based top-k/top-p, torch.multinomial.
    z = torch.log_softmax((1 - alpha) * torch.log_softmax(slm.float(), -1) + alpha * torch.log_softmax(llm.float(), -1), -1)
    z = z / temperature
    if top_k > 0:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, float("-inf"))
    if top_p < 1:
        zs, idx = torch.sort(z, descending=True)
        cum = zs.softmax(-1).cumsum(-1)
        drop = (cum - zs.softmax(-1)) >= top_p
        z = z.scatter(1, idx, zs.masked_fill(drop, float("-inf")))
    return torch.multinomial(torch.softmax(z, -1), 1, generator=gen)[:, 0]


@cuda_only
@pytest.mark.parametrize("impl", ["triton", "ref", "torch"])
@pytest.mark.parametrize("trunc", ["none", "k50_p0.9", "p0.95"])
@pytest.mark.parametrize("B", [1, 16, 64])
def test_fused_sample(bench, B, trunc, impl):
    slm, llm = _logits(B, VOCAB, "cuda")
    gen = torch.Generator(device="cuda").manual_seed(0)
    noise = make_noise(B, VOCAB, gen)
    k, p = {"none": (0, 1.0), "k50_p0.9": (50, 0.9), "p0.95": (0, 0.95)}[trunc]
    nbytes = B * VOCAB * (2 + 2 + 4)
    if impl == "triton":
        tok = fused_sample_triton(slm, llm, 0.5, "loglinear", 0.8, k, p, noise)
        assert tok.tolist() == fused_sample_ref(slm, llm, 0.5, "loglinear", 0.8, k, p, noise).tolist()
        bench(lambda: fused_sample_triton(slm, llm, 0.5, "loglinear", 0.8, k, p, noise), nbytes)
    elif impl == "ref":
        bench(lambda: fused_sample_ref(slm, llm, 0.5, "loglinear", 0.8, k, p, noise), nbytes)
    else:
        bench(lambda: _torch_conventional(slm, llm, 0.5, 0.8, k, p, gen), nbytes)


@cuda_only
@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("B", [1, 64])
def test_fuse_logprobs(bench, B, impl):
    slm, llm = _logits(B, VOCAB, "cuda")
    fn = fuse_logprobs_triton if impl == "triton" else fuse_logprobs_ref
    bench(lambda: fn(slm, llm, 0.5, "loglinear"), B * VOCAB * (2 + 2 + 4))


@cuda_only
@pytest.mark.parametrize("B", [16, 64])
def test_make_noise(bench, B):
    gen = torch.Generator(device="cuda").manual_seed(0)
    bench(lambda: make_noise(B, VOCAB, gen), B * VOCAB * 4)


# ---------------------------------------------------------------------------------- PRM scoring

@cuda_only
@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("kind", ["judge", "token_pair"])
@pytest.mark.parametrize("N", [1, 64])
def test_step_rewards(bench, N, kind, impl):
    T = N * 16
    scores = torch.randn(T, VOCAB, device="cuda").to(BF16)
    rows = torch.randperm(T, device="cuda")[:N]
    kw = dict(yes_id=9454) if kind == "judge" else dict(good_id=10, bad_id=12)
    fn = step_rewards_triton if impl == "triton" else step_rewards_ref
    bench(lambda: fn(scores, rows, kind, **kw), N * (VOCAB if kind == "judge" else 2) * 2)


# ---------------------------------------------------------------------------- speculative verify

def _spec(B, K, V, device):
    g = torch.Generator(device=device).manual_seed(2)
    q = torch.softmax(torch.randn(B, K, V, generator=g, device=device) * 2, -1)
    p = torch.softmax(torch.randn(B, K + 1, V, generator=g, device=device) * 2, -1)
    draft = torch.randint(0, V, (B, K), generator=g, device=device)
    lens = torch.full((B,), K, dtype=torch.int32, device=device)
    return draft, lens, q, p, torch.rand(B, K, generator=g, device=device), make_noise(B, V, g)


@cuda_only
@pytest.mark.parametrize("impl", ["triton", "ref"])
@pytest.mark.parametrize("B", [1, 16, 64])
def test_spec_verify(bench, B, impl):
    args = _spec(B, 4, VOCAB, "cuda")
    fn = spec_verify_triton if impl == "triton" else spec_verify_ref
    if impl == "triton":
        a, r = spec_verify_triton(*args), spec_verify_ref(*args)
        assert a[1].tolist() == r[1].tolist()
    bench(lambda: fn(*args), B * VOCAB * 4 * 3)  # one p row, one q row, one noise row per sequence


# ----------------------------------------------------------------------- weight-only matmuls

WO_SHAPES = {"0.5b_gate_up": (9728, 896), "1.5b_gate_up": (17920, 1536), "lm_head": (151936, 1536)}


def _wo_weights(N, K, fmt, device):
    g = torch.Generator(device=device).manual_seed(3)
    if fmt == "int8":
        q = torch.randint(-127, 128, (N, K), generator=g, device=device, dtype=torch.int8)
        return q, torch.rand(N, generator=g, device=device).to(BF16), None, N * K + 2 * N
    codes = torch.randint(0, 16, (N, K), generator=g, device=device, dtype=torch.uint8)
    s = torch.rand(N, K // 32, generator=g, device=device).to(BF16)
    return pack_int4(codes), s, s.clone(), N * K // 2 + 2 * s.numel() * 2


@cuda_only
@pytest.mark.parametrize("impl", ["triton", "bf16_linear"])
@pytest.mark.parametrize("fmt", ["int4", "int8"])
@pytest.mark.parametrize("M", [1, 8, 256])
@pytest.mark.parametrize("shape", list(WO_SHAPES))
def test_weight_only_matmul(bench, shape, M, fmt, impl):
    # GB/s against the weight's own bytes (+ x and y): batch 1 is the decode GEMV, bound by them;
    # bf16_linear is what --weights bf16 runs (cuBLAS on the bf16 weight), its bytes counted as bf16
    if M == 256 and shape != "1.5b_gate_up":
        pytest.skip("prefill rows: one shape is enough (compute-bound, not the weights' bytes)")
    N, K = WO_SHAPES[shape]
    x = torch.randn(M, K, device="cuda").to(BF16)
    q, s, z, wbytes = _wo_weights(N, K, fmt, "cuda")
    io = 2 * M * (K + N)
    if impl == "triton":
        bench(lambda: wo_matmul_triton(x, q, s, z), wbytes + io)
    else:
        w = dequantize(q, s, z).to(BF16)
        bench(lambda: F.linear(x, w), 2 * N * K + io)


# ---------------------------------------------------------------- CPU subset: reference timings

def test_cpu_paged_attention_ref_decode(bench):
    Hq, Hkv, D = MODELS["0.5b"]
    q, kc, vc, bt, sl, cu = _paged(4, Hq, Hkv, D, 512, 1, "cpu", dtype=torch.float32)
    bench(lambda: paged_attention_ref(q, kc, vc, bt, sl, cu, D ** -0.5), _attn_bytes(q, 4, 513, Hkv, D, 4))


def test_cpu_fused_sample_ref(bench):
    slm, llm = _logits(2, VOCAB, "cpu", torch.float32)
    noise = make_noise(2, VOCAB, torch.Generator().manual_seed(0))
    bench(lambda: fused_sample_ref(slm, llm, 0.5, "loglinear", 0.8, 50, 0.9, noise), 2 * VOCAB * 12)


@pytest.mark.parametrize("path", ["full_sort_full_noise", "sample_kept"])
def test_cpu_step_token_sampling(bench, path):
    """What the step executor pays per sampled token on CPU (T 0.7, top-p 0.95, one row):
    sample_ref with a full-vocab sort and noise row, against sample_kept."""
    from gboost.sampling import sample_kept
    from gboost.kernels.fused_sampling import sample
    x = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(0)) * 2
    x[:, :50] += 12  # LM-like: a few dominant tokens
    g = torch.Generator().manual_seed(1)
    if path == "sample_kept":
        bench(lambda: sample_kept(x, 0.7, 0, 0.95, g), VOCAB * 4)
    else:
        bench(lambda: sample(x, 0.7, 0, 0.95, make_noise(1, VOCAB, g)), VOCAB * 8)


def test_cpu_fused_logits_ref(bench):
    slm, llm = _logits(2, VOCAB, "cpu", torch.float32)
    bench(lambda: fused_logits_ref(slm, llm, 0.5, "loglinear"), 2 * VOCAB * 12)


def test_cpu_step_rewards_ref_judge(bench):
    scores = torch.randn(16, VOCAB)
    rows = torch.tensor([1, 5, 9, 15])
    bench(lambda: step_rewards_ref(scores, rows, "judge", yes_id=7), 4 * VOCAB * 4)


def test_cpu_spec_verify_ref(bench):
    args = _spec(2, 4, VOCAB, "cpu")
    bench(lambda: spec_verify_ref(*args), 2 * VOCAB * 12)


def test_cpu_store_kv_ref(bench):
    kc = torch.zeros(64, 16, 2, 64)
    k = torch.randn(64, 2, 64)
    slots = torch.randperm(64 * 16)[:64]
    bench(lambda: store_kv_ref(k, k, kc, kc, slots), 4 * k.numel() * 4)
