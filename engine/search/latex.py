"""LaTeX answers: reading ``\\boxed{...}`` (nested braces), normalising a MATH answer
(:func:`normalize_math`) and comparing two of them (:func:`math_equal`); answer.py builds the
extraction and grading rules of each data set on these."""
from __future__ import annotations

import math
import re

__all__ = ["extract_boxed", "normalize_math", "math_equal", "to_number"]


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


# ---------------------------------------------------------------------- normalisation
_TEXT_CMDS = r"(?:text|textbf|textit|textrm|mathrm|mathbf|mbox|operatorname)"
_UNIT_WORDS = (r"(?:degrees?|cents?|units?|cm|centimeters?|mm|km|meters?|inch(?:es)?|feet|foot|ft|"
               r"yards?|miles?|mph|sq|square|dollars?|hours?|minutes?|seconds?|days?|weeks?|years?|"
               r"pounds?|ounces?|grams?|kg|liters?)")


def unwrap_text(s: str) -> str:
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
    s = unwrap_text(s)
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
