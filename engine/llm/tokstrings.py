"""Token *strings* back to ids, for endpoints that key ``top_logprobs`` by strings.

OpenAI's legacy completions format keys each ``top_logprobs`` entry by the token's text.
gboost and vLLM (``return_tokens_as_token_ids``) send ``"token_id:<id>"`` keys, which are exact;
other servers send one of these spellings, all of which :class:`TokenStrings` knows:

* the vocabulary entry itself (``"Ġworld"``; what ``tokenizer.token_to_id`` takes);
* the token's text, its bytes decoded as UTF-8 with errors *ignored* (llama-cpp-python: a token
  holding part of a character reads ``""``, a control token ``""`` too) or *replaced* (Hugging
  Face's ``decode``: ``"\\ufffd"``);
* ``"bytes:\\xe4\\xb8"`` for a token that is not whole UTF-8 (vLLM, OpenAI): exact.

Several ids can share a spelling (every partial-character token reads ``""`` in llama-cpp-python's).
:meth:`TokenStrings.resolve` places an entry where its id is settled: the spelling names one id;
or it is the echoed/sampled token of that position, whose id and log-prob the response states; or
every other id of that spelling is already placed in the row. One assumption remains, counted in
``by_whole_text``: where one token spells the key whole and the others only through bytes a lossy
decode dropped (llama-cpp-python reads both ``" "`` and ``" \xe4"`` as ``" "``), the entry is the
whole token's (a partial character ranking in the top-k with a whole token's text is rare; the
space is the common case, and dropping it would lose the most likely token). Any other entry is
dropped and counted (``ambiguous``): fusion then treats its id as one the endpoint did not return
(:mod:`gboost.llm.topk`). With llama-cpp-python that is chiefly ``""``, which every control token
(``<|im_end|>``) and every lone partial character share.
A JSON object may repeat a key (two tokens of one spelling); :func:`pairs_hook` keeps them all.
"""
from __future__ import annotations

import json
import math
import re
from collections import defaultdict
from typing import Iterable, Optional

from gboost.models.tokenizer import is_byte_level

__all__ = ["TokenStrings", "pairs_hook", "entries"]

_HEX_BYTE = re.compile(r"<0x([0-9A-Fa-f]{2})>")
_BYTES_KEY = re.compile(r"\\x([0-9a-fA-F]{2})")


class _Pairs(dict):
    """A JSON object that repeated a key: the dict keeps the last value, ``pairs`` all of them."""
    pairs: list


def pairs_hook(pairs: list) -> dict:
    """``json.loads(..., object_pairs_hook=pairs_hook)``: a plain dict unless a key repeats."""
    d = dict(pairs)
    if len(d) == len(pairs):
        return d
    out = _Pairs(d)
    out.pairs = list(pairs)
    return out


def entries(obj: dict) -> list:
    """Every ``(key, value)`` of a parsed JSON object, repeated keys included."""
    return list(getattr(obj, "pairs", obj.items()))


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, inverted: the byte each character stands for."""
    from gboost.models.gguf_tokenizer import bytes_to_unicode
    return {c: b for b, c in bytes_to_unicode().items()}


def token_bytes(tokenizer) -> list[bytes]:
    """The raw bytes of every id's token (byte-level BPE, SentencePiece ``<0xNN>``/``▁``, added)."""
    backend = tokenizer.backend
    added = {int(i): t.content for i, t in backend.get_added_tokens_decoder().items()}
    byte_level, dec = is_byte_level(backend), _byte_decoder()
    out = []
    for i in range(tokenizer.vocab_size):
        tok = backend.id_to_token(i)
        if i in added or tok is None:
            out.append((added.get(i) or tok or "").encode("utf-8"))
        elif (m := _HEX_BYTE.fullmatch(tok)) is not None:
            out.append(bytes([int(m.group(1), 16)]))
        elif byte_level and all(c in dec for c in tok):
            out.append(bytes(dec[c] for c in tok))
        else:
            out.append(tok.replace("\u2581", " ").encode("utf-8"))
    return out


class TokenStrings:
    """Every spelling of every id of ``tokenizer`` (see the module docstring), and the rule that
    turns one string-keyed row into ``(id, logprob)`` pairs."""

    def __init__(self, tokenizer) -> None:
        self.by_key: dict[str, set[int]] = defaultdict(set)
        self.whole: dict[str, set[int]] = defaultdict(set)  # spellings that lose nothing of the token
        self.text_of: list[str] = []  # llama-cpp-python's spelling, to compare echoed tokens with
        specials = {int(i) for i, t in tokenizer.backend.get_added_tokens_decoder().items() if t.special}
        vocab = tokenizer.backend.get_vocab(with_added_tokens=True)
        for tok, i in vocab.items():
            self.by_key[tok].add(int(i))
            self.whole[tok].add(int(i))
        for i, b in enumerate(token_bytes(tokenizer)):
            ignore, replace = b.decode("utf-8", "ignore"), b.decode("utf-8", "replace")
            keys = {ignore, replace}
            if ignore != replace:
                keys.add("bytes:" + "".join(f"\\x{x:02x}" for x in b))
            else:
                self.whole[ignore].add(i)
            if i in specials:
                keys.add("")  # a control token detokenised without its text
            for k in keys:
                self.by_key[k].add(i)
            self.text_of.append(ignore)

    def ids(self, key: str) -> frozenset[int]:
        if key.startswith("bytes:"):
            raw = bytes(int(h, 16) for h in _BYTES_KEY.findall(key))
            exact = self.by_key.get("bytes:" + "".join(f"\\x{x:02x}" for x in raw))
            if exact:
                return frozenset(exact)
        return frozenset(self.by_key.get(key, ()))

    def resolve(self, pairs: Iterable[tuple[str, float]], known: Optional[tuple[int, float]] = None,
                stats: Optional[dict] = None) -> list[tuple[int, float]]:
        """``(id, logprob)`` for each entry whose id is certain. ``known``: the position's own
        token and log-prob, as the response states them (it settles an entry of its spelling).
        ``stats`` counts ``ambiguous`` (dropped) and ``unmapped`` (no token spells it) entries."""
        placed: dict[int, float] = {}
        pending = []
        for key, lp in pairs:
            cands = self.ids(key)
            if len(cands) == 1:
                placed.setdefault(next(iter(cands)), lp)
            elif cands:
                pending.append((key, cands, lp))
            elif stats is not None:
                stats["unmapped"] = stats.get("unmapped", 0) + 1
        for key, cands, lp in pending:
            open_ = [c for c in cands if c not in placed]
            whole = [c for c in open_ if c in self.whole.get(key, ())]
            if known is not None and known[0] in open_ and _same(lp, known[1]):
                placed[known[0]] = lp
            elif len(open_) == 1:
                placed[open_[0]] = lp
            elif len(whole) == 1:
                # one token spells the key whole; the others match it only through bytes a lossy
                # decode dropped (" " and " \xe4" both read " " with errors ignored): take the whole one
                placed[whole[0]] = lp
                if stats is not None:
                    stats["by_whole_text"] = stats.get("by_whole_text", 0) + 1
            elif stats is not None:
                stats["ambiguous"] = stats.get("ambiguous", 0) + 1
        return list(placed.items())


def _same(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-6, abs_tol=1e-6)
    except (TypeError, ValueError):
        return False
