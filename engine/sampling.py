"""Sampling: parameters, the calls into kernels/fused_sampling, and the CPU's own shortcuts.

Each request owns a seeded torch.Generator and draws the noise for its own rows, so a
request samples the same tokens whatever else shares its batch (same seed -> same answer).
On CPU a row's nucleus comes from a top-1024 partial sort (keep_mask_topc, bit-identical to the
kernels' full-sort reference) and noise is drawn for the kept tokens only (sample_kept): a
full-vocabulary sort and noise row per token cost more than a batched decode step's share.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# the seed rules are model-free (SearchConfig checks them too); routes import them from here
from gboost.seeds import SEED_MAX, SEED_MIN, SEED_RANGE, check_seed, offset_seed  # noqa: F401


@dataclass
class SamplingParams:
    temperature: float = 0.0       # 0 = greedy
    top_k: int = 0                 # 0 = off
    top_p: float = 1.0             # 1 = off
    max_tokens: int = 64
    seed: int | None = None
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def __post_init__(self):
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.max_tokens < 0:
            raise ValueError(f"max_tokens must be >= 0, got {self.max_tokens}")
        check_seed(self.seed)

    def generator(self, device: str | torch.device = "cpu") -> torch.Generator:
        g = torch.Generator(device=device)
        g.manual_seed(self.seed if self.seed is not None else torch.seed())
        return g


def row_params(params: list[SamplingParams], device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    t = torch.tensor([p.temperature for p in params], dtype=torch.float32, device=device)
    k = torch.tensor([p.top_k for p in params], dtype=torch.int32, device=device)
    pp = torch.tensor([p.top_p for p in params], dtype=torch.float32, device=device)
    return t, k, pp


def draw_noise(gens: list[torch.Generator], vocab: int, device) -> torch.Tensor:
    """One noise row per request, drawn from that request's own generator."""
    from gboost.kernels.fused_sampling import make_noise
    return torch.cat([make_noise(1, vocab, g, device) for g in gens])


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator]) -> list[int]:
    """Sample one token per row of logits [B, V] (one row per request)."""
    from gboost.kernels.fused_sampling import sample
    t, k, p = row_params(params, logits.device)
    greedy = all(x.temperature <= 0 for x in params)  # argmax needs no noise: skip drawing B x V of it
    noise = None if greedy else draw_noise(gens, logits.shape[-1], logits.device)
    return sample(logits.float(), t, k, p, noise).tolist()


def keep_mask(x, top_k, top_p):
    """Kept set of the scaled logits x [B, V]: the top-`cand` path on CPU, the reference elsewhere."""
    from gboost.kernels.fused_sampling import keep_mask_ref
    return keep_mask_topc(x, top_k, top_p) if x.device.type == "cpu" else keep_mask_ref(x, top_k, top_p)


def processed_probs(z: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The exact distribution `sample` draws from for logits z [B, V]: temperature, top-k and
    top-p applied (greedy = one-hot). Speculative verification needs it as numbers."""
    z = z.float()
    if temperature <= 0:
        return torch.nn.functional.one_hot(z.argmax(-1), z.shape[-1]).float()
    x = z / temperature
    keep = keep_mask(x, top_k, top_p)
    # -1e30 rather than -inf: same zeros after exp, and CPU softmax has a slow path for -inf.
    return torch.softmax(torch.where(keep, x, -1e30), dim=-1)


def sample_token(logits: torch.Tensor, temperature: float, top_p: float, gen: torch.Generator) -> int:
    """One token from one row of logits [V], with the caller's own generator. On CPU the nucleus
    comes from a partial sort and noise is drawn for the kept tokens only; elsewhere the Triton sampler."""
    from gboost.kernels.fused_sampling import make_noise, sample
    if logits.device.type == "cpu":
        return int(sample_kept(logits[None], temperature, 0, top_p, gen)[0])
    noise = make_noise(1, logits.shape[-1], gen, logits.device)
    return int(sample(logits[None].float(), temperature, 0, top_p, noise)[0])


def keep_mask_topc(x, top_k, top_p, cand=1024):
    """keep_mask_ref's set, bit for bit, from a top-`cand` partial sort instead of a full O(V log V)
    sort (CPU fast path): an LM's nucleus lies within its first few hundred tokens. The masses and
    the cut are keep_mask_ref's own (nucleus_weights, nucleus_cut on the same canonical order).
    Rows whose kept set may reach past the window (nucleus not closed, or ties at its edge) take
    the full sort, with the same weights."""
    from gboost.kernels._common import row_param
    from gboost.kernels.fused_sampling import keep_full_sort, keep_mask_ref, nucleus_cut, nucleus_weights
    B, V = x.shape
    k = row_param(top_k, B, torch.int64, x.device)
    p = row_param(top_p, B, torch.float32, x.device)
    do_k, do_p = (k > 0) & (k < V), p < 1
    if not bool((do_k | do_p).any()):
        return torch.ones_like(x, dtype=torch.bool)
    C = min(V, max(int(cand), int(k.max()) + 1))
    if C >= V:
        return keep_mask_ref(x, k, p)
    xs, idx = torch.topk(x, C, dim=-1)                          # [B, C] descending
    idx = idx.sort(-1).values                                   # canonical order: ties by index
    xs, o = torch.sort(x.gather(1, idx), dim=-1, descending=True, stable=True)
    idx = idx.gather(1, o)
    tau_k = torch.where(do_k, xs.gather(1, (k.clamp(1, C) - 1)[:, None])[:, 0], float("-inf"))
    w, D = nucleus_weights(x, xs[:, 0], tau_k)
    first = nucleus_cut(w.gather(1, idx), D, p)
    tau_p = torch.where(do_p, xs.gather(1, first.clamp(max=C - 1)[:, None])[:, 0], float("-inf"))
    tau = torch.maximum(tau_k, tau_p)
    # the window must hold the whole kept set: a closed nucleus and no tie at the window's edge
    spill = (do_p & (first >= C)) | (xs[:, -1] >= tau) | (do_k & (xs[:, -1] >= tau_k))
    keep = x >= tau[:, None]
    if bool(spill.any()):
        keep[spill] = keep_full_sort(x[spill], k[spill], p[spill], w[spill], D[spill])
    return keep


def sample_kept(logits, temperature, top_k=0, top_p=1.0, generator=None):
    """One token per row of logits [B, V], exactly from the distribution `sample` draws from, with
    Gumbel noise drawn only for the kept tokens (CPU: full-vocab noise per token costs more than
    the sampling itself). Greedy rows (temperature <= 0) take the argmax and draw nothing."""
    from gboost.kernels._common import row_param
    from gboost.kernels.fused_sampling import make_noise
    B, V = logits.shape
    z = logits.float()
    t = row_param(temperature, B, torch.float32, z.device)
    greedy = t <= 0
    out = z.argmax(-1)
    if bool(greedy.all()):
        return out
    x = z / torch.where(greedy, 1.0, t)[:, None]
    keep = keep_mask(x, row_param(top_k, B, torch.int64, z.device), row_param(top_p, B, torch.float32, z.device))
    for b in torch.nonzero(~greedy)[:, 0].tolist():
        ids = torch.nonzero(keep[b])[:, 0]
        g = make_noise(1, ids.numel(), generator, z.device)[0]
        out[b] = ids[torch.argmax(x[b, ids] + g)]
    return out
