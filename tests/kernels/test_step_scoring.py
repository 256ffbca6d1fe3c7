import pytest
import torch

from fp_bounds import U32, assert_within, chain_h, lse_bound
from gboost.kernels.step_scoring import step_rewards, step_rewards_ref, step_rewards_triton


def _scores(T, V, dtype, device, seed, scale=4.0, pad=3):
    g = torch.Generator().manual_seed(seed)
    wide = torch.randn(T, V + pad, generator=g) * scale
    return wide.to(dtype).to(device)[:, :V]  # a strided view, as a PRM lm_head slice would be


@pytest.mark.parametrize("kind,V,N,dtype", [
    ("token_pair", 1000, 1, torch.float32),
    ("token_pair", 1000, 17, torch.bfloat16),
    ("two_class", 2, 17, torch.float32),
    ("judge", 1000, 17, torch.float32),
    ("judge", 1000, 5, torch.bfloat16),
    ("judge", 151936, 1, torch.float32),
])
def test_step_rewards_matches_ref(device, kind, V, N, dtype):
    T = 40
    s = _scores(T, V, dtype, device, seed=V + N, scale=30.0 if kind == "judge" else 4.0)
    g = torch.Generator().manual_seed(N)
    rows = torch.randint(0, T, (N,), generator=g).to(device)
    kw = {"token_pair": dict(good_id=V - 1, bad_id=7), "two_class": {}, "judge": dict(yes_id=V // 3)}[kind]
    if kind == "judge":
        s[rows[0], V // 3] = s[rows[0]].max() + 2.0  # make one P(yes) large so tolerance is meaningful
        s[rows[-1], : V // 2] = float("-inf")  # masked vocabulary part must not produce NaN
    out = torch.full((N,), float("nan"), device=device)
    block_v = 256 if V == 1000 else min(4096, 1 << (V - 1).bit_length())  # the launcher's default
    step_rewards_triton(s, rows, kind, out=out, block_v=block_v, **kw)
    ref = step_rewards_ref(s, rows, kind, **kw)
    assert not out.isnan().any()
    # Both against float64, within the bound of how each sums: the kernel per lane then across lanes, torch
    # in any order (tests/fp_bounds.py); P = exp(z_a - lse) adds exp's error (4 + 2|z_a - lse|) ulp.
    a, b = {"token_pair": (V - 1, 7), "two_class": (1, 0), "judge": (V // 3, None)}[kind]
    z64 = s[rows].double().cpu()
    if kind != "judge":
        z64 = z64[:, [a, b]]
        a = 0
    lse = torch.logsumexp(z64, -1)
    want = torch.exp(z64[:, a] - lse)
    n = z64.shape[1]
    for got, (h, resc) in [(out, chain_h(n, block_v) if kind == "judge" else (1, 0)), (ref, (n - 1, 0))]:
        rel = lse_bound(z64, 0.0, h, resc) + (5 + 2 * (z64[:, a] - lse).abs()) * U32
        rel = torch.where(want > 0, rel, 0.0)  # a -inf logit: P = 0 exactly
        assert_within(got, want, want * torch.expm1(rel) + 2.0 ** -126, kind)  # + fp32's smallest normal
    assert ((ref >= 0) & (ref <= 1)).all()


def test_step_rewards_ref_semantics():
    s = torch.tensor([[0.0, 1.0, 2.0, 3.0], [5.0, 0.0, 0.0, 5.0]])
    rows = torch.tensor([1, 0])
    p = step_rewards_ref(s, rows, "token_pair", good_id=0, bad_id=3)
    torch.testing.assert_close(p, torch.tensor([0.5, torch.sigmoid(torch.tensor(-3.0)).item()]))
    j = step_rewards_ref(s, rows, "judge", yes_id=3)
    e = s[rows].double().exp()
    torch.testing.assert_close(j, (e[:, 3] / e.sum(-1)).float())
    c = step_rewards_ref(torch.tensor([[0.0, 0.0], [1.0, 3.0]]), torch.tensor([1, 0]), "two_class")
    torch.testing.assert_close(c, torch.tensor([torch.sigmoid(torch.tensor(2.0)).item(), 0.5]))


def test_dispatch_forced(device, monkeypatch):
    s = _scores(6, 300, torch.float32, device, seed=1)
    rows = torch.tensor([5, 0, 2], device=device)
    a = step_rewards(s, rows, "judge", yes_id=4)
    monkeypatch.setenv("GBOOST_FORCE_TRITON", "1")
    b = step_rewards(s, rows, "judge", yes_id=4)
    # two orders of one 300-term sum: each within the any-order bound of float64 (fp_bounds)
    z64 = s[rows].double().cpu()
    want = torch.softmax(z64, -1)[:, 4]
    rel = lse_bound(z64, 0.0, 299) + (5 + 2 * (z64[:, 4] - torch.logsumexp(z64, -1)).abs()) * U32
    for got in (a, b):
        assert_within(got, want, want * torch.expm1(rel), "judge")
