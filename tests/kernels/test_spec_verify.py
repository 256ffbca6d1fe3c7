import pytest
import torch

from gboost.kernels.fused_sampling import make_noise
from gboost.kernels.spec_verify import spec_verify, spec_verify_ref, spec_verify_triton


def _problem(B, K, V, seed, closeness=0.3, dtype=torch.float32, device="cpu"):
    """Random draft q, target p near q (so both accepts and rejects happen), drafts sampled from q."""
    g = torch.Generator().manual_seed(seed)
    q = torch.softmax(torch.randn(B, K, V, generator=g) * 2, -1)
    p = torch.softmax(torch.randn(B, K + 1, V, generator=g) * closeness + torch.log(torch.cat([q, q[:, :1]], 1)), -1)
    draft = torch.multinomial(q.reshape(-1, V), 1, generator=g).reshape(B, K)
    lens = torch.randint(0, K + 1, (B,), generator=g).int()
    u = torch.rand(B, K, generator=g)
    noise = make_noise(B, V, g)
    return [t.to(device) for t in (draft, lens, q.to(dtype), p.to(dtype), u, noise)]


@pytest.mark.parametrize("B,K,V,closeness,dtype", [
    (17, 5, 1000, 0.3, torch.float32),
    (17, 3, 1000, 3.0, torch.float32),   # mostly rejections
    (1, 1, 1000, 0.05, torch.float32),
    (6, 4, 777, 0.3, torch.bfloat16),
])
def test_spec_verify_bit_identical_to_ref(device, B, K, V, closeness, dtype):
    draft, lens, q, p, u, noise = _problem(B, K, V, seed=B * K + V, closeness=closeness, dtype=dtype, device=device)
    draft[lens < K, -1] = -5  # garbage past draft_lens must not be read
    lens[0] = K
    out = (torch.full((B,), -7, dtype=torch.int32, device=device), torch.full((B, K + 1), -7, dtype=torch.int64, device=device))
    spec_verify_triton(draft, lens, q, p, u, noise, out=out, block_v=256)
    acc, toks = out
    r_acc, r_toks = spec_verify_ref(draft, lens, q, p, u, noise)
    assert acc.tolist() == r_acc.tolist() and toks.tolist() == r_toks.tolist()
    for b in range(B):  # layout: accepted prefix, one drawn token, then -1 padding
        n = int(acc[b])
        assert 0 <= n <= int(lens[b])
        assert toks[b, :n].tolist() == draft[b, :n].tolist()
        assert 0 <= int(toks[b, n]) < V and (toks[b, n + 1:] == -1).all()


def test_spec_verify_greedy_one_hot(device):
    # Greedy drafts and targets (one-hot): accept while the argmaxes agree, then emit the target's argmax.
    B, K, V = 4, 3, 10
    tq = torch.tensor([[1, 2, 3], [1, 2, 3], [5, 5, 5], [0, 0, 0]])
    tp = torch.tensor([[1, 2, 3, 9], [1, 7, 3, 9], [4, 5, 5, 5], [0, 0, 0, 2]])
    q = torch.nn.functional.one_hot(tq, V).float()
    p = torch.nn.functional.one_hot(tp, V).float()
    lens = torch.tensor([3, 3, 3, 2], dtype=torch.int32)
    u = torch.rand(B, K, generator=torch.Generator().manual_seed(0))
    noise = make_noise(B, V, torch.Generator().manual_seed(1))
    for fn in (spec_verify_ref, spec_verify_triton):
        acc, toks = fn(*(t.to(device) for t in (tq, lens, q, p, u, noise)))
        assert acc.tolist() == [3, 1, 0, 2]
        assert toks.tolist() == [[1, 2, 3, 9], [1, 7, -1, -1], [4, -1, -1, -1], [0, 0, 0, -1]]


def _draw(probs, N, gen):
    return torch.multinomial(probs, N, replacement=True, generator=gen)


def test_speculative_sampling_theorem_and_accept_lengths():
    # 200k rows sharing one (p, q); drafts really drawn from q; the reference path (= kernel, bit for bit).
    N, K, V = 200_000, 3, 20
    g = torch.Generator().manual_seed(7)
    q1 = torch.softmax(torch.randn(K, V, generator=g) * 1.5, -1)
    p1 = torch.softmax(torch.randn(K + 1, V, generator=g) * 1.5, -1)
    draft = torch.stack([_draw(q1[i], N, g) for i in range(K)], 1)
    lens = torch.full((N,), K, dtype=torch.int32)
    lens[N // 2:] = 2  # half the rows drafted 2 tokens: their bonus comes from p[2]
    acc, toks = spec_verify_ref(draft, lens, q1.expand(N, K, V), p1.expand(N, K + 1, V),
                                torch.rand(N, K, generator=g), make_noise(N, V, g))
    tv = lambda a, b: 0.5 * (a - b).abs().sum().item()
    freq = lambda t: torch.bincount(t, minlength=V).double() / t.numel()
    # First emitted token ~ p_0 whatever q is (and q_0 is far from p_0, so this is not vacuous).
    assert tv(freq(toks[:, 0]), p1[0].double()) < 0.01
    assert tv(q1[0], p1[0]) > 0.1
    # Token at position 1 among rows that accepted position 0 ~ p_1.
    assert tv(freq(toks[acc >= 1, 1]), p1[1].double()) < 0.015
    # Accepted-length law: beta_i = sum_x min(p_i, q_i), P(len=j) = prod_{i<j} beta_i * (1 - beta_j), P(len=L) = prod.
    beta = torch.minimum(p1[:K], q1).sum(-1).double()
    for L, rows in [(K, slice(0, N // 2)), (2, slice(N // 2, N))]:
        law = torch.zeros(L + 1, dtype=torch.float64)
        for j in range(L + 1):
            law[j] = beta[:j].prod() * (1 - beta[j] if j < L else 1.0)
        emp = torch.bincount(acc[rows].long(), minlength=L + 1).double() / (N // 2)
        assert emp.numel() == L + 1 and tv(emp, law) < 0.01
        # Emitted tokens: L accepted rows emit the bonus from p_L.
        full = rows.start + torch.nonzero(acc[rows] == L)[:, 0]
        assert tv(freq(toks[full, L]), p1[L].double()) < 0.02


def test_dispatch_forced(device, monkeypatch):
    draft, lens, q, p, u, noise = _problem(5, 2, 50, seed=3, device=device)
    a = spec_verify(draft, lens, q, p, u, noise)
    monkeypatch.setenv("GBOOST_FORCE_TRITON", "1")
    b = spec_verify(draft, lens, q, p, u, noise)
    assert a[0].tolist() == b[0].tolist() and a[1].tolist() == b[1].tolist()
