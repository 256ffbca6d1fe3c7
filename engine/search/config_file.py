"""Reading a search config file: JSON or TOML, a ``[search]`` table, ``extends`` chains, and the
line a key is set on (so that a bad key's error points at it)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

__all__ = ["ConfigError", "read_file", "read_chain", "key_line"]


class ConfigError(ValueError):
    """A bad value or an unknown key in a :class:`SearchConfig`; ``key`` names it when known (a
    config file's error then points at the key's line)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key


def read_file(p: Path) -> tuple[dict, str, str]:
    """The keys of one config file (its ``[search]`` table, if that is all it has), its text, suffix."""
    if p.is_dir():
        raise ConfigError(f"{p}: is a directory, not a config file")
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    suffix = p.suffix.lower()
    if suffix not in (".json", ".toml"):
        raise ConfigError(f"{p}: unsupported config format {suffix!r} (use .json or .toml)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    try:
        if suffix == ".json":
            data = json.loads(text)
        else:
            import tomllib
            data = tomllib.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{p}:{e.lineno}: cannot parse JSON: {e.msg} (column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # tomllib.TOMLDecodeError is a ValueError
        m = re.search(r"\(at line (\d+), column (\d+)\)", str(e))
        where = f"{p}:{m.group(1)}" if m else str(p)
        if "(at end of document)" in str(e):  # the file ends inside a value: its last line
            where = f"{p}:{max(1, len(text.splitlines()))}"
        msg = re.sub(r"\s*\(at (line \d+, column \d+|end of document)\)", "", str(e)) or type(e).__name__
        raise ConfigError(f"{where}: cannot parse {suffix[1:].upper()}: {msg}"
                          + (f" (column {m.group(2)})" if m else "")) from None
    if isinstance(data, dict) and set(data) == {"search"} and isinstance(data["search"], dict):
        data = data["search"]
    return data, text, suffix


def read_chain(p: Path, chain: list[tuple[Path, str, str]]) -> Any:
    """The keys of ``p`` over those of the files it ``extends`` (appended to ``chain``, ``p`` first)."""
    if any(p.resolve() == q.resolve() for q, _, _ in chain):
        raise ConfigError(f"{chain[0][0]}: 'extends' goes round in a circle: "
                          + " -> ".join(str(q) for q, _, _ in chain) + f" -> {p}", "extends")
    data, text, suffix = read_file(p)
    chain.append((p, text, suffix))
    if not isinstance(data, dict) or "extends" not in data:
        return data
    data = dict(data)
    base = data.pop("extends")
    if not isinstance(base, str) or not base:
        line = key_line(text, "extends", suffix)
        raise ConfigError(f"{p}{'' if line is None else f':{line}'}: extends must be the path of a config "
                          f"file (relative to this one), got {base!r}", "extends")
    base_data = read_chain(p.parent / base, chain)
    if not isinstance(base_data, dict):
        return base_data  # from_dict says what is wrong with it
    return {**base_data, **data}


def key_line(text: str, key: str, suffix: str) -> int | None:
    """1-based line where a JSON or TOML config file sets ``key`` (its first mention)."""
    pat = rf'"{re.escape(key)}"\s*:' if suffix == ".json" else rf'^\s*"?{re.escape(key)}"?\s*='
    for i, line in enumerate(text.splitlines(), 1):
        if re.search(pat, line):
            return i
    return None
