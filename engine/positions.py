"""The position limit: how long a sequence may grow on a model of ``max_positions`` positions.
Every check of it (a prompt at the door, a sequence joining a batch, the end of a generation or
of a step) reads ``fits``."""
from __future__ import annotations


class PromptTooLong(ValueError):
    """A sequence longer than its model's positions (a 400 on the server)."""


def fits(n_tokens: int, max_positions: int) -> bool:
    """A sequence of ``n_tokens`` can be computed: its positions are 0 .. max_positions - 1."""
    return n_tokens <= max_positions


def check_fits(n_tokens: int, max_positions: int, model: str, what: str) -> None:
    if not fits(n_tokens, max_positions):
        raise PromptTooLong(f"{what} is {n_tokens} tokens, more than the {max_positions} positions of model "
                            f"{model!r}: it exceeds the model's context")
