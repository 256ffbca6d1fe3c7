import pytest
import torch
import torch.nn.functional as F

from fp_bounds import assert_within, attention64
from gboost.kernels.paged_attention import paged_attention, paged_attention_ref, paged_attention_torch, paged_attention_triton


def build(B, Hq, Hkv, D, BS, qlens, ctx, dtype, device, seed=0, L=2, layer=1):
    """Random paged cache in the CONTRACTS pool layout, shuffled block tables, packed queries."""
    g = torch.Generator().manual_seed(seed)
    lens = [c + q for c, q in zip(ctx, qlens)]
    nbs = [-(-n // BS) for n in lens]
    NB = sum(nbs) + 3
    page = L * 2 * BS * Hkv * D + 11  # pool row wider than this model's page: honour strides
    pool = torch.randn(NB, page, generator=g).to(dtype)
    kv = pool[:, : L * 2 * BS * Hkv * D].view(NB, L, 2, BS, Hkv, D)
    bt = torch.full((B, max(nbs) + 2), -7, dtype=torch.int32)  # garbage past the used blocks
    perm = torch.randperm(NB, generator=g)
    i = 0
    for b in range(B):
        bt[b, : nbs[b]] = perm[i: i + nbs[b]].int()
        i += nbs[b]
    q = torch.randn(sum(qlens), Hq, D, generator=g).to(dtype)
    cu = torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist(), dtype=torch.int32)
    sl = torch.tensor(lens, dtype=torch.int32)
    pool = pool.to(device)
    kv = pool[:, : L * 2 * BS * Hkv * D].view(NB, L, 2, BS, Hkv, D)
    return q.to(device), kv[:, layer, 0], kv[:, layer, 1], bt.to(device), sl.to(device), cu.to(device)


CASES = {
    # name: (B, Hq, Hkv, D, BS, qlens, ctx, block_n)
    "decode_b1_mha": (1, 2, 2, 64, 16, [1], [47], None),
    "decode_b17_gqa7_cross_blocks": (17, 7, 1, 40, 16, [1] * 17, list(range(0, 170, 10)), None),
    "decode_b17_gqa6": (17, 12, 2, 32, 16, [1] * 17, [15, 16, 17, 31, 32, 33, 1, 0, 63, 64, 65, 5, 9, 100, 2, 48, 47], 16),
    "extend_mixed_gqa7": (4, 14, 2, 64, 5, [3, 1, 17, 9], [13, 50, 0, 31], 32),
    "extend_long_tiles_gqa1": (3, 3, 3, 24, 16, [40, 2, 33], [0, 20, 7], 16),
    # a scheduler batch: decode rows among extends of every length class, lengths far apart
    "mixed_classes_gqa6": (9, 12, 2, 32, 4, [1, 16, 1, 5, 3, 1, 2, 9, 1], [90, 3, 0, 41, 7, 13, 60, 0, 5], 16),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_paged_attention_matches_ref(device, name, dtype):
    B, Hq, Hkv, D, BS, qlens, ctx, block_n = CASES[name]
    q, kc, vc, bt, sl, cu = build(B, Hq, Hkv, D, BS, qlens, ctx, dtype, device, seed=len(name))
    scale = D ** -0.5
    out = torch.full_like(q, float("nan"))  # poison: every row and head must be written
    paged_attention_triton(q, kc, vc, bt, sl, cu, scale, out=out, block_n=block_n)
    ref = paged_attention_ref(q, kc, vc, bt, sl, cu, scale)
    assert not out.isnan().any()
    _within_bounds(out, ref, q, kc, vc, bt, sl, cu, scale, block_n or 16)  # 16: at most as many rescales as the default


def _within_bounds(out, ref, q, kc, vc, bt, sl, cu, scale, block_n, passes=1):
    # kernel and reference each against float64, within fp_bounds.attention64's bound (any summation
    # order; the kernel's online softmax rescales once per key block, per split or pass merged)
    max_len = int(sl.max())
    want, bound = attention64(q, kc, vc, bt, sl, cu, scale, rescales=-(-max_len // block_n) + passes,
                              low_precision=q.dtype != torch.float32)
    assert_within(out, want, bound, "kernel")
    assert_within(ref, want, bound, "reference")


@pytest.mark.parametrize("name,num_splits", [("decode_b17_gqa7_cross_blocks", 3), ("extend_mixed_gqa7", 4),
                                             ("decode_b1_mha", 5)])
def test_split_kv_matches_ref(device, name, num_splits):
    # Flash-decoding path: keys split across programs, partial (out, lse) merged; some splits are empty.
    B, Hq, Hkv, D, BS, qlens, ctx, block_n = CASES[name]
    q, kc, vc, bt, sl, cu = build(B, Hq, Hkv, D, BS, qlens, ctx, torch.float32, device, seed=7)
    out = torch.full_like(q, float("nan"))
    paged_attention_triton(q, kc, vc, bt, sl, cu, 0.2, out=out, block_n=16, num_splits=num_splits)
    assert not out.isnan().any()
    _within_bounds(out, paged_attention_ref(q, kc, vc, bt, sl, cu, 0.2), q, kc, vc, bt, sl, cu, 0.2, 16, num_splits)


def test_ref_matches_sdpa_on_contiguous_kv():
    # The reference against torch SDPA on unpaged K/V: prefill (causal) and a k-token extend.
    D, Hq, Hkv, BS = 16, 6, 2, 4
    qlens, ctx = [11, 3], [0, 9]
    q, kc, vc, bt, sl, cu = build(2, Hq, Hkv, D, BS, qlens, ctx, torch.float64, "cpu", seed=3)
    ref = paged_attention_ref(q, kc, vc, bt, sl, cu, 0.3)
    want, bound = attention64(q, kc, vc, bt, sl, cu, 0.3)
    assert_within(ref, want, bound, "reference")  # fp32 inside: within its rounding bound
    for b in range(2):
        L, s, e = int(sl[b]), int(cu[b]), int(cu[b + 1])
        blocks = bt[b, : -(-L // BS)].long()
        K = kc[blocks].reshape(-1, Hkv, D)[:L].transpose(0, 1).repeat_interleave(Hq // Hkv, 0)
        V = vc[blocks].reshape(-1, Hkv, D)[:L].transpose(0, 1).repeat_interleave(Hq // Hkv, 0)
        mask = torch.ones(e - s, L, dtype=torch.bool).tril(diagonal=L - (e - s))
        exp = F.scaled_dot_product_attention(q[s:e].transpose(0, 1), K, V, attn_mask=mask, scale=0.3)
        torch.testing.assert_close(want[s:e], exp.transpose(0, 1), atol=1e-12, rtol=1e-12)  # float64 both


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("name", list(CASES))
def test_vectorised_torch_path_matches_ref(name, dtype):
    """The CPU dispatch path (batched over sequences) against the per-sequence reference."""
    B, Hq, Hkv, D, BS, qlens, ctx, _ = CASES[name]
    q, kc, vc, bt, sl, cu = build(B, Hq, Hkv, D, BS, qlens, ctx, dtype, "cpu", seed=len(name) + 1)
    out = torch.full_like(q, float("nan"))
    paged_attention_torch(q, kc, vc, bt, sl, cu, D ** -0.5, out=out)
    ref = paged_attention_ref(q, kc, vc, bt, sl, cu, D ** -0.5)
    assert not out.isnan().any()
    _within_bounds(out, ref, q, kc, vc, bt, sl, cu, D ** -0.5, 512)  # torch's fused CPU attention: key blocks <= 512


def test_dispatch_forced_and_cpu(device, monkeypatch):
    q, kc, vc, bt, sl, cu = build(2, 4, 2, 16, 8, [1, 2], [5, 9], torch.float32, device, seed=9)
    monkeypatch.delenv("GBOOST_FORCE_TRITON", raising=False)
    a = paged_attention(q, kc, vc, bt, sl, cu, 0.25)
    monkeypatch.setenv("GBOOST_FORCE_TRITON", "1")
    b = paged_attention(q, kc, vc, bt, sl, cu, 0.25)
    _within_bounds(b, a, q, kc, vc, bt, sl, cu, 0.25, 16)
