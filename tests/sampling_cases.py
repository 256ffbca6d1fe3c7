"""Logit rows, per-row sampling settings and an independent exact distribution, shared by the
kernel's tests (tests/kernels/test_fused_sampling.py) and the CPU sampler's (tests/engine/test_sampling.py)."""
import torch


def logits(B, V, seed, dtype=torch.float32, device="cpu", scale=3.0, ties=False):
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(3):
        x = torch.randn(B, V, generator=g) * scale
        if ties:  # coarse grid: many exact ties, also at the top-k / top-p thresholds
            x = (x * 2).round() / 2
        out.append(x.to(dtype).to(device))
    return out


def row_params(B, V, seed):
    g = torch.Generator().manual_seed(seed)
    temp = torch.tensor([0.0, 0.7, 1.3, 1.0] * (B // 4 + 1))[:B]
    ks = torch.tensor([0, 1, 5, V - 1, V, 2 * V, 3, 0, 0, 50, 7, 0, 0, 1, 2, 0, 40] * (B // 17 + 1), dtype=torch.int32)[:B]
    ps = torch.tensor([1.0, 0.9, 0.5, 0.0, 1.0, 0.95, 0.99, 0.3, 1, 1, 0.8, 0.7, 0.2, 1, 1, 0.6, 0.9] * (B // 17 + 1))[:B]
    alpha = torch.rand(B, generator=g)
    alpha[0] = 0.0
    if B > 1:
        alpha[1] = 1.0
    return alpha, temp, ks, ps


def exact_dist(z, t, k, p):
    """Independent exact distribution of one row: float64, explicit loops over sorted values."""
    x = (z.double() / t).tolist()
    order = sorted(range(len(x)), key=lambda i: -x[i])
    kept = [i for i in order if k <= 0 or x[i] >= x[order[k - 1]]]
    w = torch.tensor([x[i] for i in kept], dtype=torch.float64).softmax(0).tolist()
    if p < 1:
        acc, cut = 0.0, None
        for i, wi in zip(kept, w):
            acc += wi
            if acc >= p:
                cut = x[i]
                break
        kept = [i for i in kept if x[i] >= cut]
    dist = torch.zeros(len(x), dtype=torch.float64)
    dist[kept] = torch.tensor([x[i] for i in kept], dtype=torch.float64).softmax(0)
    return dist
