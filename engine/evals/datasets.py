"""Evaluation data: GSM8K and MATH(-500) rows read from a path, format auto-detected.

* GSM8K rows: ``{"question": ..., "answer": "...worked solution...\\n#### 18"}``;
  the gold is the normalised number after ``####``.
* plain rows: ``{"question": ..., "answer": "18"}`` (no ``####``): a number is graded as GSM8K,
  anything else as a MATH answer.
* MATH rows: ``{"problem": ..., "solution": ..., "answer": "\\frac{1}{2}", ...}``;
  the gold is ``answer`` (or the last ``\\boxed{}`` of ``solution``).  ``level``,
  ``subject`` and ``unique_id`` are kept in ``meta``.

Files are JSON Lines (one object per line; blank lines ignored) or a single JSON
array.  The data is read from where it lives (e.g. ``../shared/data/``), never copied.
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from gboost.search.answer import extract_gsm8k_gold, extract_math_gold, normalize_number

__all__ = ["EvalRow", "load_rows", "read_data_file", "rows_from_dicts", "detect_kind", "DatasetError", "KINDS",
           "parse_lines", "load_lines"]

KINDS = ("gsm8k", "math")
_PLAIN_NUMBER = re.compile(r"\s*[-+]?\$?\d[\d,]*(\.\d+)?\s*%?\s*")


class DatasetError(ValueError):
    """A dataset file or row that cannot be used (message says where and why)."""


@dataclass
class EvalRow:
    idx: int                     #: position in the file (0-based)
    question: str                #: what the model is asked
    gold: str                    #: normalised gold answer (GSM8K: number string; MATH: LaTeX)
    kind: str                    #: "gsm8k" | "math" (selects extraction and grading)
    id: str | None = None        #: dataset id when the row has one (MATH unique_id)
    meta: dict[str, Any] = field(default_factory=dict)


def detect_kind(obj: dict[str, Any]) -> str:
    """'gsm8k' or 'math' from a row's keys; raises DatasetError otherwise."""
    if not isinstance(obj, dict):
        raise DatasetError(f"row is a {type(obj).__name__}, expected a JSON object")
    if "problem" in obj and ("answer" in obj or "solution" in obj):
        return "math"
    if "question" in obj and "answer" in obj:
        return "gsm8k"
    raise DatasetError(
        f"unknown row format with keys {sorted(obj)}; expected GSM8K {{question, answer}} "
        f"or MATH {{problem, solution, answer}}")


def _row(obj: dict[str, Any], idx: int, kind: str) -> EvalRow:
    if kind == "gsm8k":
        q, a = obj.get("question"), obj.get("answer")
        if not isinstance(q, str) or not q.strip():
            raise DatasetError("GSM8K row: 'question' must be a non-empty string")
        if isinstance(a, (int, float)) and not isinstance(a, bool):
            a = str(a)
        if not isinstance(a, str) or not a.strip():
            raise DatasetError("'answer' must be a GSM8K solution ending in '#### <number>', or a plain answer")
        meta = {k: v for k, v in obj.items() if k not in ("question", "answer")}
        rid = str(obj["id"]) if "id" in obj else None
        if "####" not in a:  # plain {"question", "answer"}: a number is graded as GSM8K, else as MATH
            num = normalize_number(a) if _PLAIN_NUMBER.fullmatch(a) else None
            return EvalRow(idx, q, num, "gsm8k", rid, meta) if num is not None else EvalRow(idx, q, a.strip(), "math", rid, meta)
        try:
            gold = extract_gsm8k_gold(a)
        except ValueError as e:
            raise DatasetError(f"GSM8K row: {e}") from None
        return EvalRow(idx, q, gold, "gsm8k", rid, meta)
    if kind == "math":
        q = obj.get("problem")
        if not isinstance(q, str) or not q.strip():
            raise DatasetError("MATH row: 'problem' must be a non-empty string")
        try:
            gold = extract_math_gold(obj.get("answer"), obj.get("solution"))
        except ValueError as e:
            raise DatasetError(f"MATH row: {e}") from None
        meta = {k: obj[k] for k in ("level", "subject") if k in obj}
        uid = obj.get("unique_id", obj.get("id"))
        return EvalRow(idx, q, gold, "math", None if uid is None else str(uid), meta)
    raise DatasetError(f"unknown dataset kind {kind!r}; expected one of {KINDS}")


def rows_from_dicts(dicts: Iterable[dict[str, Any]], kind: str = "auto", *,
                    source: str = "<rows>", lines: list[int] | None = None) -> list[EvalRow]:
    """Convert raw row objects; ``kind='auto'`` detects it from the first row and checks the rest.
    ``lines``: each row's line in ``source`` (errors then say ``source:LINE``, else ``row N``)."""
    out: list[EvalRow] = []
    fixed = None if kind == "auto" else kind
    if fixed is not None and fixed not in KINDS:
        raise DatasetError(f"unknown dataset kind {kind!r}; expected auto or one of {KINDS}")
    for i, obj in enumerate(dicts):
        where = f"{source}:{lines[i]}" if lines is not None else f"{source}: row {i + 1}"
        try:
            k = detect_kind(obj)
            if fixed is None:
                fixed = k
            elif k != fixed:
                raise DatasetError(f"looks like {k} but earlier rows are {fixed} (mixed formats)")
            out.append(_row(obj, i, fixed))
        except DatasetError as e:
            raise DatasetError(f"{where}: {e}") from None
    return out


def read_data_file(path: str | Path) -> tuple[list[Any], list[int] | None]:
    """The raw records of a data file and the line each starts on (None for a JSON array file).

    The one reader of data files (``gboost eval --data``, ``gboost train-prm --data``): every
    problem is one ``DatasetError`` line naming the file, and the line where one applies --
    missing file, a directory, not UTF-8, empty, a line that is not JSON (or nests too deeply,
    or holds an integer past Python's digit limit), no rows."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: {p} (pass the path to e.g. gsm8k_test.jsonl)")
    if p.is_dir():
        raise DatasetError(f"{p} is a directory; pass a .jsonl file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = p.read_bytes()[:e.start].count(b"\n") + 1
        raise DatasetError(f"{p}:{line}: not UTF-8 text ({e.reason})") from None
    if not text.strip():
        raise DatasetError(f"{p}: file is empty")
    if text.lstrip().startswith("["):
        try:
            objs = json.loads(text)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{e.lineno}: invalid JSON array ({e.msg}, column {e.colno})") from None
        except (ValueError, RecursionError) as e:
            raise DatasetError(f"{p}: invalid JSON array ({_json_problem(e)})") from None
        return objs, None
    objs, lines = [], []
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            objs.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{p}:{lineno}: invalid JSON ({e.msg}, column {e.colno}); "
                               "expected one object per line") from None
        except (ValueError, RecursionError) as e:
            raise DatasetError(f"{p}:{lineno}: invalid JSON ({_json_problem(e)})") from None
        lines.append(lineno)
    return objs, lines


def _json_problem(e: BaseException) -> str:
    if isinstance(e, RecursionError):
        return "nested too deeply"
    return "an integer literal is too long" if "integer string conversion" in str(e) else str(e)


def load_rows(path: str | Path, kind: str = "auto", limit: int | None = None) -> list[EvalRow]:
    """Read a GSM8K or MATH file (.jsonl, or a .json array); ``limit`` keeps the first rows.
    A bad file or row raises one ``DatasetError`` line naming the file and line (see
    :func:`read_data_file`)."""
    p = Path(path)
    objs, lines = read_data_file(p)
    if limit is not None:
        if limit < 0:
            raise DatasetError(f"limit must be >= 0, got {limit}")
        objs = objs[:limit]
        lines = None if lines is None else lines[:limit]
    if not objs:
        raise DatasetError(f"{p}: no rows")
    return rows_from_dicts(objs, kind, source=str(p), lines=lines)


def parse_lines(spec: str | None) -> tuple[int, int] | None:
    """'201-1000' -> (201, 1000): 1-based, inclusive line numbers of a data file."""
    if spec is None:
        return None
    a, sep, b = spec.partition("-")
    try:
        lo, hi = int(a), int(b) if sep else int(a)
    except ValueError:
        raise ValueError(f"--lines {spec!r}: expected FIRST-LAST, e.g. 201-1000") from None
    if not 1 <= lo <= hi:
        raise ValueError(f"--lines {spec!r}: need 1 <= FIRST <= LAST")
    return lo, hi


def load_lines(path: str | Path, lines: tuple[int, int] | None, limit: int | None = None) -> list[EvalRow]:
    """The rows of ``path`` on ``lines`` (1-based, inclusive; None: all), then the first ``limit``."""
    rows = load_rows(path)
    if lines is not None:
        lo, hi = lines
        if hi > len(rows):
            raise ValueError(f"--lines {lo}-{hi}: {path} has {len(rows)} rows")
        rows = rows[lo - 1:hi]
    return rows[:limit] if limit is not None else rows
