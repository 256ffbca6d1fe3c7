"""Final-answer extraction, normalisation and grading for GSM8K and MATH.

GSM8K
    gold: the number after ``#### `` (commas, ``$``, units, trailing period removed);
    prediction: ``#### X`` > last ``\\boxed{X}`` > "The (final) answer is X" > the last
    number in the text.  Compared numerically (``18`` == ``18.00`` == ``$18``).
MATH
    gold: the dataset's ``answer`` field (or the last ``\\boxed{}`` of the solution);
    prediction: last ``\\boxed{...}`` (nested braces) > "The answer is X" > last number.
    Both sides go through :func:`normalize_math` (``\\left``/``\\right``, spacing
    commands, ``\\dfrac``, ``\\text{}``, units, degrees, ``$``, ``%``, thousands
    separators, ``\\frac12``, ``\\sqrt2``, ``x^{2}``, ``x = ``...), then compared as
    strings, as simple numbers (``0.5`` == ``\\frac12`` == ``1/2``), as choice
    letters, or element-wise for tuples/intervals/lists (the LaTeX side: latex.py).
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

from .latex import unwrap_text, extract_boxed, math_equal, normalize_math, to_number

__all__ = [
    "extract_boxed", "extract_after_phrase", "find_numbers", "last_number", "normalize_number",
    "extract_gsm8k_gold", "extract_gsm8k_pred", "extract_math_gold", "extract_math_pred",
    "extract_answer", "normalize_math", "math_equal", "gsm8k_equal", "answer_key", "to_number", "ends_path",
]


def ends_path(text: str, depth: int, cfg, answer_re: re.Pattern | None = None) -> bool:
    """The search's terminal rule: a step at ``depth`` ends its path when it states a final answer
    (``cfg.answer_pattern``) or reaches ``cfg.max_depth``. An executor adds what only it can see
    (EOS, the model's last position) and the search applies this to every step it receives."""
    if depth >= cfg.max_depth:
        return True
    return bool((answer_re or re.compile(cfg.answer_pattern)).search(text))


# ------------------------------------------------------------------------------- numbers
_NUM_RE = re.compile(
    r"(?<![\w.])(?:-\$?|\$-?)?(?:\d+\s*/\s*\d+(?![\d,.]*\d)|\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
)


def find_numbers(text: str) -> list[str]:
    """Numbers in ``text`` in order, as written (``1,234``, ``-5``, ``$18.00``, ``3/4``...)."""
    out = []
    for m in _NUM_RE.finditer(text or ""):
        out.append(m.group(0).strip())
    return out


def last_number(text: str) -> str | None:
    nums = find_numbers(text)
    return nums[-1] if nums else None


def _parse_number(s: str) -> Fraction | None:
    s = s.strip().replace("$", "").replace(" ", "").replace(",", "")
    if not s:
        return None
    m = re.fullmatch(r"(-?)(\d+)/(\d+)", s)
    if m:
        if int(m.group(3)) == 0:
            return None
        v = Fraction(int(m.group(2)), int(m.group(3)))
        return -v if m.group(1) else v
    try:
        return Fraction(Decimal(s))
    except (InvalidOperation, ValueError):
        return None


def _canon(v: Fraction) -> str:
    if v.denominator == 1:
        return str(v.numerator)
    d = Decimal(v.numerator) / Decimal(v.denominator)
    txt = format(d.normalize(), "f")
    return txt


def normalize_number(s: str | None) -> str | None:
    """Canonical string of the first number in ``s`` (``"$1,234.50."`` -> ``"1234.5"``), or None."""
    if s is None:
        return None
    s = str(s).strip()
    s = re.sub(r"\\[!,;: ]", "", s)  # LaTeX spacing such as 10,\!000
    s = s.replace("\\$", "$").replace("\\%", "%")
    box = extract_boxed(s)
    if box is not None:
        s = box
    s = unwrap_text(s)
    m = re.search(r"\\frac\{(-?\d+)\}\{(\d+)\}", s)
    if m and not find_numbers(s[:m.start()]):
        s = s[:m.start()] + f"{m.group(1)}/{m.group(2)}" + s[m.end():]
    nums = find_numbers(s)
    if not nums:
        return None
    v = _parse_number(nums[0])
    if v is None:
        return None
    return _canon(v)


# ------------------------------------------------------------------------- "answer is"
_PHRASE_RE = re.compile(
    r"(?:final answer|the answer|answer)\s*(?:is|:|=)\s*:?\s*(.+)", re.IGNORECASE)


def extract_after_phrase(text: str) -> str | None:
    """The rest of the line after the last "The (final) answer is" / "Answer:"."""
    ms = list(_PHRASE_RE.finditer(text or ""))
    if not ms:
        return None
    tail = ms[-1].group(1).split("\n")[0].strip()
    box = extract_boxed(tail)
    if box is not None:
        return box
    mm = re.search(r"\$([^$]+)\$", tail)
    if mm:
        tail = mm.group(1)
    else:
        tail = re.split(r"\.\s|\.$", tail)[0]  # the rest of the sentence only
    tail = tail.strip().strip("$").strip()
    tail = re.sub(r"[.\s]+$", "", tail)
    return tail or None


# ------------------------------------------------------------------------------- GSM8K
def extract_gsm8k_gold(solution: str) -> str:
    """The normalised number after ``#### `` of a GSM8K ``answer`` field."""
    if "####" not in solution:
        raise ValueError("GSM8K answer has no '#### <number>' line")
    tail = solution.rsplit("####", 1)[1].strip()
    v = normalize_number(tail)
    if v is None:
        raise ValueError(f"GSM8K answer: no number after '####': {tail!r}")
    return v


def extract_gsm8k_pred(text: str) -> str | None:
    """Predicted number of a GSM8K solution text (normalised), or None."""
    if not text:
        return None
    if "####" in text:
        v = normalize_number(text.rsplit("####", 1)[1].split("\n")[0])
        if v is not None:
            return v
    box = extract_boxed(text)
    if box is not None:
        v = normalize_number(box.split("=")[-1])
        if v is not None:
            return v
    tail = extract_after_phrase(text)
    if tail is not None:
        v = normalize_number(tail.split("=")[-1]) if "=" in tail else normalize_number(tail)
        if v is not None:
            return v
    n = last_number(text)
    return normalize_number(n) if n is not None else None


def gsm8k_equal(pred: str | None, gold: str | None) -> bool:
    if pred is None or gold is None:
        return False
    a, b = _parse_number(normalize_number(pred) or ""), _parse_number(normalize_number(gold) or "")
    if a is None or b is None:
        return False
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-6)


# -------------------------------------------------------------------------------- MATH
def extract_math_gold(row_answer: str | None, solution: str | None = None) -> str:
    if row_answer is not None and str(row_answer).strip():
        return str(row_answer).strip()
    box = extract_boxed(solution or "")
    if box is None:
        raise ValueError("MATH row has no 'answer' and no \\boxed{} in its solution")
    return box


def extract_math_pred(text: str) -> str | None:
    if not text:
        return None
    box = extract_boxed(text)
    if box is not None:
        return box
    tail = extract_after_phrase(text)
    if tail is not None:
        return tail
    return last_number(text)


def extract_answer(text: str, kind: str = "auto", *, strict: bool = False) -> str | None:
    """Answer of a solution text.

    ``kind``: ``gsm8k`` (normalised number), ``math`` (raw LaTeX answer) or ``auto``
    (boxed > ``####`` > "answer is" > last number, raw).  ``strict=True`` ignores the
    last-number fallback, i.e. only answers the text explicitly states.
    """
    if kind == "gsm8k" and not strict:
        return extract_gsm8k_pred(text)
    if kind == "math" and not strict:
        return extract_math_pred(text)
    if kind not in ("auto", "gsm8k", "math"):
        raise ValueError(f"unknown answer kind {kind!r}")
    if not text:
        return None
    box = extract_boxed(text)
    if box is not None:
        return box
    if "####" in text:
        tail = text.rsplit("####", 1)[1].split("\n")[0].strip().rstrip(".")
        if tail:
            return tail
    tail = extract_after_phrase(text)
    if tail is not None:
        return tail
    if strict:
        return None
    return last_number(text)



def answer_key(ans: str | None) -> str | None:
    """Grouping key for majority voting: a canonical number when simple, else the normalised LaTeX."""
    if ans is None:
        return None
    norm = normalize_math(ans)
    v = to_number(norm)
    if v is not None:
        f = Fraction(v).limit_denominator(10_000)
        return _canon(f) if abs(float(f) - v) < 1e-9 else repr(v)
    return norm or None
