"""The CPU shortcuts of engine/sampling.py: the same kept set as the kernels' reference, bit for
bit, and tokens from the exact distribution."""
import pytest
import torch

from gboost.sampling import keep_mask_topc, sample_kept
from gboost.kernels.fused_sampling import keep_mask_ref
from sampling_cases import exact_dist as _exact_dist, logits as _logits, row_params as _row_params


@pytest.mark.parametrize("V,cand", [(1000, 8), (1000, 64), (151936, 1024)])
def test_keep_mask_topc_equals_ref(V, cand):
    B = 17
    _, _, ks, ps = _row_params(B, V, seed=3)
    ks = torch.where(ks < cand, ks, 0)  # a k beyond the window makes the whole batch take the full sort
    rows, spilled = [], 0
    for seed, (scale, ties, peak) in enumerate([(3.0, False, 12.0), (3.0, False, 0.0), (0.3, False, 0.0),
                                                 (3.0, True, 6.0), (1.0, True, 0.0)]):
        x = _logits(B, V, seed=seed, scale=scale, ties=ties)[0]
        x[:, :5] += peak  # LM-like: a few dominant tokens (nucleus inside the window)
        got, want = keep_mask_topc(x, ks, ps, cand=cand), keep_mask_ref(x, ks, ps)
        assert torch.equal(got, want), (seed, (got != want).sum(-1))
        spilled += int(((want.sum(-1) > cand) & (ps < 1)).sum())  # nucleus wider than the window
        rows.append(want.sum(-1))
    kept = torch.cat(rows)
    assert spilled > 0 and bool(((kept > 1) & (kept < cand)).any())  # both the window and the fallback ran


def test_sample_kept_frequencies_match_exact_distribution():
    V, N, t, k, p = 50, 100_000, 0.8, 20, 0.9
    z = _logits(1, V, seed=5, scale=1.5)[0][0]
    exact = _exact_dist(z, t, k, p)
    gen = torch.Generator().manual_seed(7)
    toks = torch.cat([sample_kept(z.expand(1000, V), t, k, p, gen) for _ in range(N // 1000)])
    freq = torch.bincount(toks, minlength=V).double() / N
    assert 0.5 * (freq - exact).abs().sum().item() < 0.015
    assert 0.5 * (freq - torch.softmax(z.double() / t, 0)).abs().sum().item() > 0.05  # truncation visible
    # greedy rows take the argmax and draw no noise; a seeded generator repeats itself
    mixed = sample_kept(z.expand(4, V), torch.tensor([0.0, 1.0, 0.0, 1.0]), 0, 1.0,
                        torch.Generator().manual_seed(1))
    assert mixed[0] == mixed[2] == z.argmax()
    assert torch.equal(mixed, sample_kept(z.expand(4, V), torch.tensor([0.0, 1.0, 0.0, 1.0]), 0, 1.0,
                                          torch.Generator().manual_seed(1)))
