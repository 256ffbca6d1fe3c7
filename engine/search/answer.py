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
    letters, or element-wise for tuples/intervals/lists.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation
from fractions import Fraction

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


# --------------------------------------------------------------------------------- boxed
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\b")


def _read_group(s: str, i: int) -> tuple[str, int] | None:
    """Read a ``{...}`` group starting at s[i] == '{'; returns (content, index after '}')."""
    depth = 0
    for j in range(i, len(s)):
        ch = s[j]
        if ch == "\\" and j + 1 < len(s) and s[j + 1] in "{}":
            continue
        if ch == "{" and (j == 0 or s[j - 1] != "\\"):
            depth += 1
        elif ch == "}" and (j == 0 or s[j - 1] != "\\"):
            depth -= 1
            if depth == 0:
                return s[i + 1:j], j + 1
    return None


def extract_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (or ``\\fbox{...}`` / ``\\boxed X``); nested braces ok."""
    if not text:
        return None
    for m in reversed(list(_BOX_RE.finditer(text))):
        i = m.end()
        while i < len(text) and text[i] == " ":
            i += 1
        if i < len(text) and text[i] == "{":
            g = _read_group(text, i)
            if g is not None:
                return g[0].strip()
        else:  # "\boxed 5" form: up to whitespace or '$'
            mm = re.match(r"\s*([^\s$]+)", text[m.end():])
            if mm:
                return mm.group(1).strip()
    return None


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
    s = _unwrap_text(s)
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


# ---------------------------------------------------------------------- normalisation
_TEXT_CMDS = r"(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)"
_UNIT_WORDS = (r"(?:degrees?|cents?|units?|cm|centimeters?|mm|km|meters?|inch(?:es)?|feet|foot|ft|"
               r"yards?|miles?|mph|sq|square|dollars?|hours?|minutes?|seconds?|days?|weeks?|years?|"
               r"pounds?|ounces?|grams?|kg|liters?)")


def _unwrap_text(s: str) -> str:
    prev = None
    while prev != s:
        prev = s
        s = re.sub(r"\\" + _TEXT_CMDS + r"\s*\{([^{}]*)\}", r"\1", s)
    return s


def _take_arg(s: str, i: int) -> tuple[str, int] | None:
    """One TeX argument at s[i]: a {group} or a single character."""
    if i >= len(s):
        return None
    if s[i] == "{":
        g = _read_group(s, i)
        return g
    if s[i] == "\\":
        m = re.match(r"\\[a-zA-Z]+", s[i:])
        if m:
            return m.group(0), i + m.end()
    return s[i], i + 1


def _fix_fracs(s: str) -> str:
    """``\\frac12`` -> ``\\frac{1}{2}``, ``\\frac{270}7`` -> ``\\frac{270}{7}``."""
    out, i = [], 0
    while True:
        j = s.find("\\frac", i)
        if j < 0:
            out.append(s[i:])
            break
        out.append(s[i:j])
        k = j + len("\\frac")
        a = _take_arg(s, k)
        b = _take_arg(s, a[1]) if a else None
        if a is None or b is None:
            out.append(s[j:])
            break
        out.append("\\frac{" + _fix_fracs(a[0]) + "}{" + _fix_fracs(b[0]) + "}")
        i = b[1]
    return "".join(out)


def normalize_math(s: str | None) -> str:
    """Canonical form of a MATH answer string (see the module docstring)."""
    if s is None:
        return ""
    s = str(s).strip()
    box = extract_boxed(s)
    if box is not None and s.lstrip("$ ").startswith(("\\boxed", "\\fbox")):
        s = box
    s = s.replace("\n", " ")
    s = s.replace("\\\\", " ; ")                               # matrix row separator
    s = re.sub(r"\\[!,;: ]", "", s)                          # spacing commands
    s = re.sub(r"\\(?:q?quad)\b", "", s)
    s = s.replace("tfrac", "frac").replace("dfrac", "frac")
    s = s.replace("\\left", "").replace("\\right", "")
    s = s.replace("\\displaystyle", "")
    s = re.sub(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ", "", s)  # degrees
    s = s.replace("\\circ", "")
    s = s.replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    # "5.4 \text{ cents}", "15\mbox{ cm}^2": a text group starting with a space is a unit
    s = re.sub(r"\\" + _TEXT_CMDS + r"\s*\{\s+[^{}]*\}(\^\{?\d\}?)?", "", s)
    s = _unwrap_text(s)
    s = s.strip()
    # trailing unit words after a number: "10 cm", "30 degrees"
    s = re.sub(r"(?<=[\d}])\s*" + _UNIT_WORDS + r"(\^\{?\d\}?)?\s*\.?$", "", s)
    # "x \in [-2,7]" -> "[-2,7]"; "x = 5" -> "5" (single variable on the left)
    s = re.sub(r"^[a-zA-Z]\s*\\in\s*", "", s)
    if s.count("=") == 1:
        lhs, rhs = s.split("=")
        if re.fullmatch(r"\s*[a-zA-Z](_\{?\w+\}?)?\s*", lhs):
            s = rhs
    s = s.strip()
    s = re.sub(r"^\.", "0.", s)
    s = re.sub(r"(?<=[\s{(\[,=])\.(?=\d)", "0.", s)
    s = s.replace(" ", "")
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    # simple a/b -> \frac{a}{b} (a, b: integers, single letters or commands such as \pi)
    s = re.sub(r"(?<![\w}^_])(\d+|\\[a-zA-Z]+|[a-zA-Z])/(\d+|\\[a-zA-Z]+|[a-zA-Z])(?![\w{.])",
               r"\\frac{\1}{\2}", s)
    s = re.sub(r"\^\{(\w)\}", r"^\1", s)
    s = re.sub(r"_\{(\w+)\}", r"_\1", s)
    s = re.sub(r"\.+$", "", s)
    if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s):      # thousands separators
        s = s.replace(",", "")
    if re.fullmatch(r"-?\d+\.\d*?0+", s):                    # 18.50 -> 18.5, 3.0 -> 3
        s = s.rstrip("0").rstrip(".")
    m = re.fullmatch(r"\(?([A-Ea-e])\)?", s)                 # choice letters: (B) -> B
    if m:
        s = m.group(1).upper()
    if s.startswith("\\{") and s.endswith("\\}"):
        s = s[2:-2]
    return s


def to_number(s: str) -> float | None:
    """Value of a *simple* normalised answer: int, decimal, a/b, \\frac{a}{b}, mixed number."""
    s = s.strip()
    m = re.fullmatch(r"-?\d+(?:\.\d+)?|-?\.\d+", s)
    if m:
        return float(s)
    m = re.fullmatch(r"(-?)\\frac\{(-?\d+(?:\.\d+)?)\}\{(-?\d+(?:\.\d+)?)\}", s)
    if m:
        den = float(m.group(3))
        if den == 0:
            return None
        v = float(m.group(2)) / den
        return -v if m.group(1) else v
    m = re.fullmatch(r"(-?\d+)/(\d+)", s)
    if m:
        den = int(m.group(2))
        return int(m.group(1)) / den if den else None
    m = re.fullmatch(r"(-?)(\d+)\\frac\{(\d+)\}\{(\d+)\}", s)
    if m and int(m.group(4)):
        v = int(m.group(2)) + int(m.group(3)) / int(m.group(4))
        return -v if m.group(1) else v
    return None


def _split_top(s: str) -> list[str]:
    parts, depth, cur = [], 0, []
    for ch in s:
        if ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    return parts


def _norm_equal(a: str, b: str, depth: int = 0) -> bool:
    if a == b:
        return True
    if re.fullmatch(r"[A-Za-z]{2,}", a) and a.lower() == b.lower():
        return True
    fa, fb = to_number(a), to_number(b)
    if fa is not None and fb is not None:
        return math.isclose(fa, fb, rel_tol=1e-6, abs_tol=1e-9)
    if depth > 2:
        return False
    # tuples / intervals: same brackets, element-wise, in order
    if len(a) >= 2 and len(b) >= 2 and a[0] in "([" and b[0] in "([" and a[-1] in ")]" and b[-1] in ")]":
        if a[0] != b[0] or a[-1] != b[-1]:
            return False
        pa, pb = _split_top(a[1:-1]), _split_top(b[1:-1])
        return len(pa) == len(pb) and all(_norm_equal(x, y, depth + 1) for x, y in zip(pa, pb))
    # plain lists of solutions "1,-2" vs "-2,1": unordered
    pa, pb = _split_top(a), _split_top(b)
    if len(pa) > 1 and len(pa) == len(pb):
        rest = list(pb)
        for x in pa:
            for k, y in enumerate(rest):
                if _norm_equal(x, y, depth + 1):
                    del rest[k]
                    break
            else:
                return False
        return True
    return False


def math_equal(pred: str | None, gold: str | None) -> bool:
    """Is the MATH prediction equivalent to the gold answer (after normalisation)?"""
    if pred is None or gold is None:
        return False
    a, b = normalize_math(pred), normalize_math(gold)
    if not a or not b:
        return False
    return _norm_equal(a, b)


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
