"""Sampling parameters and the batched call into kernels/fused_sampling.

Each request owns a seeded torch.Generator and draws the noise for its own rows, so a
request samples the same tokens whatever else shares its batch (same seed -> same answer).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

# the seed rules are model-free (SearchConfig checks them too); routes import them from here
from engine.seeds import SEED_MAX, SEED_MIN, SEED_RANGE, check_seed, offset_seed  # noqa: F401


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
    from kernels.fused_sampling import make_noise
    return torch.cat([make_noise(1, vocab, g, device) for g in gens])


def sample_rows(logits: torch.Tensor, params: list[SamplingParams], gens: list[torch.Generator]) -> list[int]:
    """Sample one token per row of logits [B, V] (one row per request)."""
    from kernels.fused_sampling import sample
    t, k, p = row_params(params, logits.device)
    greedy = all(x.temperature <= 0 for x in params)  # argmax needs no noise: skip drawing B x V of it
    noise = None if greedy else draw_noise(gens, logits.shape[-1], logits.device)
    return sample(logits.float(), t, k, p, noise).tolist()


def processed_probs(z: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """The exact distribution `sample` draws from for logits z [B, V]: temperature, top-k and
    top-p applied (greedy = one-hot). Speculative verification needs it as numbers."""
    from kernels.fused_sampling import keep_mask
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
    from kernels.fused_sampling import make_noise, sample, sample_kept
    if logits.device.type == "cpu":
        return int(sample_kept(logits[None], temperature, 0, top_p, gen)[0])
    noise = make_noise(1, logits.shape[-1], gen, logits.device)
    return int(sample(logits[None].float(), temperature, 0, top_p, noise)[0])
