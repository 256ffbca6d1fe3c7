"""PRM step scoring in one launch per batch.

step_rewards reads only the PRM output rows at step-separator positions (`rows`) of a packed [T, V]
score matrix and turns each into a probability that the step is good:
  "token_pair": softmax over the two logits (good_id, bad_id) -> P(good)      (Math-Shepherd style)
  "two_class":  scores is [T, 2] from a score head -> softmax(row)[1]
  "judge":      full-vocabulary softmax at the row -> P(yes_id), via a streaming logsumexp
                (the [V] softmax is never materialised).
(Aggregating a path's rewards, min/prod/mean/last, is the search's: the tree lives on the host and a
path has at most max_depth steps, so a kernel launch would cost more than the Python reduction.)
"""
import torch
import triton
import triton.language as tl

from ._common import launch, next_pow2, same_device, use_triton

KINDS = ("token_pair", "two_class", "judge")


@triton.jit
def _step_rewards_kernel(s_ptr, rows_ptr, out_ptr, s_t, s_v, V, id_a, id_b,
                         JUDGE: tl.constexpr, BLOCK_V: tl.constexpr):
    i = tl.program_id(0)
    row = tl.load(rows_ptr + i).to(tl.int64)
    base = s_ptr + row * s_t
    if JUDGE:
        # Per-lane online max / sum-exp over the vocabulary, merged once at the end.
        m = tl.full([BLOCK_V], float("-inf"), tl.float32)
        acc = tl.zeros([BLOCK_V], tl.float32)
        for start in range(0, V, BLOCK_V):
            offs = start + tl.arange(0, BLOCK_V)
            x = tl.load(base + offs.to(tl.int64) * s_v, mask=offs < V, other=float("-inf")).to(tl.float32)
            m_new = tl.maximum(m, x)
            m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)  # all -inf so far: avoid inf - inf
            acc = acc * tl.exp(m - m_safe) + tl.exp(x - m_safe)
            m = m_new
        mx = tl.max(m, 0)
        lse = mx + tl.log(tl.sum(acc * tl.exp(m - mx), 0))
        x_yes = tl.load(base + id_a * s_v).to(tl.float32)
        r = tl.exp(x_yes - lse)
    else:
        a = tl.load(base + id_a * s_v).to(tl.float32)
        b = tl.load(base + id_b * s_v).to(tl.float32)
        mx = tl.maximum(a, b)
        ea = tl.exp(a - mx)
        r = ea / (ea + tl.exp(b - mx))
    tl.store(out_ptr + i, r)


def _ids(kind, good_id, bad_id, yes_id):
    assert kind in KINDS, kind
    if kind == "token_pair":
        assert good_id is not None and bad_id is not None, "token_pair needs good_id and bad_id"
        return int(good_id), int(bad_id)
    if kind == "two_class":
        return 1, 0
    assert yes_id is not None, "judge needs yes_id"
    return int(yes_id), 0


def step_rewards_ref(scores, rows, kind, good_id=None, bad_id=None, yes_id=None):
    """Reference: gather the rows, softmax in fp32, read the wanted probability."""
    a, b = _ids(kind, good_id, bad_id, yes_id)
    x = scores[rows.long()].float()
    if kind == "judge":
        return torch.softmax(x, dim=-1)[:, a]
    return torch.softmax(x[:, [a, b]], dim=-1)[:, 0]


def step_rewards_triton(scores, rows, kind, good_id=None, bad_id=None, yes_id=None, out=None, block_v=None):
    a, b = _ids(kind, good_id, bad_id, yes_id)
    N = rows.shape[0]
    V = scores.shape[1]
    if kind == "two_class":
        assert V == 2, "two_class expects [T, 2] scores"
    out = torch.empty(N, dtype=torch.float32, device=scores.device) if out is None else out
    if N == 0:
        return out
    launch(
        _step_rewards_kernel, (N,), scores, rows.contiguous(), out, scores.stride(0), scores.stride(1), V, a, b,
        JUDGE=kind == "judge", BLOCK_V=block_v or min(4096, next_pow2(V)), num_warps=4 if kind == "judge" else 1,
    )
    return out


def step_rewards(scores, rows, kind, good_id=None, bad_id=None, yes_id=None):
    """scores [T, V] (packed PRM outputs), rows [N] int64 row indices of step separators -> [N] fp32."""
    same_device(scores=scores, rows=rows)
    if use_triton(scores):
        return step_rewards_triton(scores, rows, kind, good_id, bad_id, yes_id)
    return step_rewards_ref(scores, rows, kind, good_id, bad_id, yes_id)
