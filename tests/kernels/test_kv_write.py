import pytest
import torch

from gboost.kernels.kv_write import store_kv, store_kv_ref, store_kv_triton


def _pool_views(num_blocks, L, BS, Hkv, D, dtype, device, layer, extra=37):
    # CONTRACTS: one pool, page_elems >= L*2*BS*Hkv*D, layer view strided by page_elems in dim 0.
    page = L * 2 * BS * Hkv * D + extra
    pool = torch.full((num_blocks, page), float("nan"), dtype=dtype, device=device)
    kv = pool[:, : L * 2 * BS * Hkv * D].view(num_blocks, L, 2, BS, Hkv, D)
    return pool, kv[:, layer, 0], kv[:, layer, 1]


@pytest.mark.parametrize("T,Hkv,D,BS,dtype", [
    (1, 2, 64, 16, torch.float32),
    (17, 1, 40, 16, torch.float32),
    (33, 7, 24, 5, torch.bfloat16),
])
def test_store_kv_matches_ref(device, T, Hkv, D, BS, dtype):
    g = torch.Generator().manual_seed(T * 100 + Hkv)
    num_blocks, L = 9, 3
    assert T <= num_blocks * BS
    k = torch.randn(T, Hkv, D, generator=g).to(dtype).to(device)
    v = torch.randn(T, Hkv, D, generator=g).to(dtype).to(device)
    slots = torch.randperm(num_blocks * BS, generator=g)[:T].to(device)
    slots[::3] = -1  # skipped writes
    pool_t, kc_t, vc_t = _pool_views(num_blocks, L, BS, Hkv, D, dtype, device, layer=1)
    pool_r, kc_r, vc_r = _pool_views(num_blocks, L, BS, Hkv, D, dtype, device, layer=1)
    store_kv_triton(k, v, kc_t, vc_t, slots)
    store_kv_ref(k, v, kc_r, vc_r, slots)
    # Bitwise equal on the whole pool (NaN == NaN): written slots match, nothing else touched.
    assert torch.equal(pool_t.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       pool_r.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))
    # The reference itself: each kept token landed at its slot, skipped ones left nowhere.
    for t in range(T):
        s = int(slots[t])
        if s >= 0:
            assert torch.equal(kc_r[s // BS, s % BS], k[t]) and torch.equal(vc_r[s // BS, s % BS], v[t])
    n_written = int((slots >= 0).sum()) * Hkv * D * 2
    assert int((~torch.isnan(pool_r.float())).sum()) == n_written


def test_store_kv_dispatch_forced(device, monkeypatch):
    monkeypatch.setenv("GBOOST_FORCE_TRITON", "1")
    k = torch.randn(3, 2, 8, generator=torch.Generator().manual_seed(0)).to(device)
    kc = torch.zeros(2, 4, 2, 8, device=device)
    vc = torch.zeros(2, 4, 2, 8, device=device)
    store_kv(k, -k, kc, vc, torch.tensor([5, -1, 0], device=device))
    assert torch.equal(kc[1, 1], k[0]) and torch.equal(kc[0, 0], k[2]) and torch.equal(vc[0, 0], -k[2])
    assert int((kc != 0).sum()) == 2 * 2 * 8  # token 1 (slot -1) went nowhere
