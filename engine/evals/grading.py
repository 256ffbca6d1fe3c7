"""Grading of a model's solution text against a dataset gold answer (uses gboost.search.answer)."""
from __future__ import annotations

from gboost.search.answer import extract_gsm8k_pred, extract_math_pred, gsm8k_equal, math_equal

__all__ = ["extract_pred", "is_correct", "grade"]


def extract_pred(text: str | None, kind: str) -> str | None:
    """The predicted final answer of a solution text for dataset ``kind`` (gsm8k | math)."""
    if not text:
        return None
    if kind == "gsm8k":
        return extract_gsm8k_pred(text)
    if kind == "math":
        return extract_math_pred(text)
    raise ValueError(f"unknown dataset kind {kind!r}")


def is_correct(pred: str | None, gold: str, kind: str) -> bool:
    if kind == "gsm8k":
        return gsm8k_equal(pred, gold)
    if kind == "math":
        return math_equal(pred, gold)
    raise ValueError(f"unknown dataset kind {kind!r}")


def grade(text: str | None, gold: str, kind: str) -> tuple[str | None, bool]:
    """(prediction, correct) for a full solution text."""
    pred = extract_pred(text, kind)
    return pred, is_correct(pred, gold, kind)
