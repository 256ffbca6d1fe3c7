"""CPU attention on a scheduler-like batch: one padded computation for the whole batch (the
baseline) against per-class padding (what paged_attention_torch does), in one process.

    python -m pytest benchmarks/test_attention_cpu.py --benchmark-only
"""
import pytest
import torch

from gboost.kernels.paged_attention import _attend_padded, paged_attention_torch

BS, HQ, HKV, D = 16, 12, 2, 128          # the 1.5B demo model's attention shape


@pytest.fixture(scope="module")
def batch():
    """30 decode rows with 250-700 tokens of context, and 3 extends (a judge step, two drafts)."""
    g = torch.Generator().manual_seed(0)
    qlens = [1] * 30 + [80, 16, 16]
    ctx = torch.randint(250, 700, (33,), generator=g).tolist()
    blocks = [-(-(c + n) // BS) for c, n in zip(ctx, qlens)]
    kc = torch.randn(sum(blocks), BS, HKV, D, generator=g).to(torch.bfloat16)
    vc = torch.randn(sum(blocks), BS, HKV, D, generator=g).to(torch.bfloat16)
    bt = torch.zeros(33, max(blocks), dtype=torch.int32)
    start = 0
    for b, n in enumerate(blocks):
        bt[b, :n] = torch.arange(start, start + n)
        start += n
    sl = torch.tensor([c + n for c, n in zip(ctx, qlens)], dtype=torch.int32)
    cu = torch.tensor([0] + torch.tensor(qlens).cumsum(0).tolist(), dtype=torch.int32)
    q = torch.randn(int(cu[-1]), HQ, D, generator=g).to(torch.bfloat16)
    return q, kc, vc, bt, sl, cu


def one_padding(q, kc, vc, bt, sl, cu):
    cu = cu.long()
    out = torch.empty_like(q)
    _attend_padded(q, kc, vc, bt, sl, cu[:-1], cu[1:] - cu[:-1], D ** -0.5, out)
    return out


@pytest.mark.parametrize("impl", ["one_padding", "classes"])
def test_mixed_batch_attention(benchmark, batch, impl):
    fn = one_padding if impl == "one_padding" else (
        lambda q, kc, vc, bt, sl, cu: paged_attention_torch(q, kc, vc, bt, sl, cu, D ** -0.5))
    out = benchmark.pedantic(fn, args=batch, rounds=5, warmup_rounds=1)
    # torch's fused attention blocks keys by the padded length, so paddings may round differently:
    # both within the fp64 bound (tests/fp_bounds.py; key blocks of up to 512, P rounded to bf16)
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from fp_bounds import assert_within, attention64
    want, bound = attention64(*batch[:6], D ** -0.5, rescales=-(-int(batch[4].max()) // 512) + 1,
                              low_precision=True)
    assert_within(out, want, bound, impl)
