"""Seeds: the range every route, the CLI and SearchConfig accept, and the seed of a request's j-th sample.
Model-free, so the search policy can check a seed without importing torch."""
from __future__ import annotations

#: Seeds are the integers torch.Generator.manual_seed accepts: it keeps 64 bits, a negative seed
#: standing for its two's complement (-1 is 2**64 - 1). Checked by ``check_seed`` on every route
#: (completions, solve, SearchConfig, CLI) so a seed is refused alike everywhere, never overflows.
SEED_MIN, SEED_MAX = -(2**63), 2**64 - 1
SEED_RANGE = "[-2**63, 2**64 - 1]"


def check_seed(seed: int | None, what: str = "seed") -> int | None:
    """``seed`` unchanged if it is None or an integer in ``SEED_RANGE``; else ValueError."""
    if seed is None:
        return None
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"{what} must be an integer in {SEED_RANGE}, got {type(seed).__name__}")
    if not SEED_MIN <= seed <= SEED_MAX:
        shown = str(seed) if abs(seed) < 10**30 else f"an integer of {len(str(abs(seed)))} digits"
        raise ValueError(f"{what} must be an integer in {SEED_RANGE}, got {shown}")
    return seed


def offset_seed(seed: int | None, j: int) -> int | None:
    """Seed of the j-th of several samples (e.g. choice j of n): ``seed + j``, wrapped to 64 bits as
    manual_seed itself wraps negative seeds, so a seed near the top of the range cannot overflow."""
    return None if seed is None else (seed + j) % 2**64
