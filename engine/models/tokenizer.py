"""Thin wrapper over a `tokenizers.Tokenizer`: encode/decode, chat template, vocab checks.

The chat template is rendered like transformers' `apply_chat_template`: a sandboxed, immutable jinja2
environment with `trim_blocks`/`lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that
does not HTML-escape, and the globals `raise_exception` and `strftime_now`; the special tokens
(`bos_token`, `eos_token`, ...) are template variables.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Iterable, Sequence


class ChatTemplateError(ValueError):
    """The chat template is missing, or raised / failed while rendering."""


def _tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _raise_exception(message):
    from jinja2.exceptions import TemplateError

    raise TemplateError(message)


def _strftime_now(fmt):
    return datetime.now().strftime(fmt)


@lru_cache(maxsize=16)
def compile_chat_template(template: str):
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    try:
        return env.from_string(template)
    except jinja2.TemplateSyntaxError as e:
        raise ChatTemplateError(f"chat template does not compile: {e}") from e


class Tokenizer:
    def __init__(self, backend, chat_template: str | None = None, eos_token_ids: Iterable[int] = (),
                 special_tokens: dict[str, str | None] | None = None, bos_token_id: int | None = None):
        self.backend = backend  # tokenizers.Tokenizer
        self.chat_template = chat_template
        self.eos_token_ids: list[int] = list(dict.fromkeys(int(i) for i in eos_token_ids))
        self.special_tokens: dict[str, str | None] = dict(special_tokens or {})
        self.bos_token_id = bos_token_id
        self._fingerprint: str | None = None
        self._piece = None  # backend for encode_piece (built on first use)

    @classmethod
    def from_checkpoint(cls, ckpt) -> "Tokenizer":
        return cls(ckpt.tokenizer, ckpt.chat_template, ckpt.eos_token_ids, ckpt.special_tokens,
                   ckpt.config.bos_token_id)

    @classmethod
    def from_file(cls, path: str, **kwargs) -> "Tokenizer":
        from tokenizers import Tokenizer as _T

        return cls(_T.from_file(str(path)), **kwargs)

    # -------------------------------------------------------------- basic ops
    @property
    def vocab_size(self) -> int:
        """Number of token ids, added tokens included (may be < the model's padded vocab_size)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    @property
    def eos_token_id(self) -> int | None:
        return self.eos_token_ids[0] if self.eos_token_ids else None

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return list(self.backend.encode(text, add_special_tokens=add_special_tokens).ids)

    def encode_prompt(self, text: str) -> list[int]:
        """A plain-text prompt as transformers' ``tokenizer(text)`` encodes it: with the BOS the
        tokenizer adds (Llama, SentencePiece GGUFs with add_bos), nothing extra for Qwen. Chat
        prompts use ``encode_chat`` instead: their template writes any BOS itself."""
        return self.encode(text, add_special_tokens=True)

    def encode_piece(self, text: str) -> list[int]:
        """Text that continues a sequence (a step, a judge question, a stop string): no BOS and
        no SentencePiece dummy-prefix "▁", which a tokenizer puts in front of a whole text only."""
        return list(self._piece_backend().encode(text, add_special_tokens=False).ids)

    def _piece_backend(self):
        if self._piece is None:
            self._piece = _without_dummy_prefix(self.backend)
        return self._piece

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [list(e.ids) for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        return self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(int(i))

    def is_eos(self, token_id: int) -> bool:
        return int(token_id) in self.eos_token_ids

    # ---------------------------------------------------------- chat template
    def apply_chat_template(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True,
                            tools: list[dict] | None = None, **kwargs: Any) -> str:
        """Render `messages` ([{"role": ..., "content": ...}, ...]) into the prompt string."""
        if not self.chat_template:
            raise ChatTemplateError("this tokenizer has no chat template")
        for m in messages:
            if not isinstance(m, dict) or "role" not in m:
                raise ChatTemplateError(f"chat messages must be dicts with a 'role', got {m!r}")
        from jinja2.exceptions import TemplateError

        template = compile_chat_template(self.chat_template)
        variables = {k: v for k, v in self.special_tokens.items() if v is not None}
        variables.update(kwargs)
        try:
            return template.render(messages=[dict(m) for m in messages], tools=tools, documents=None,
                                   add_generation_prompt=add_generation_prompt, **variables)
        except TemplateError as e:
            raise ChatTemplateError(f"chat template failed: {e}") from e

    def encode_chat(self, messages: Sequence[dict[str, Any]], add_generation_prompt: bool = True) -> list[int]:
        """Rendered chat -> ids. Special tokens in the text (e.g. <|im_start|>) map to their ids."""
        return self.encode(self.apply_chat_template(messages, add_generation_prompt), add_special_tokens=False)

    # ---------------------------------------------------------- vocab checks
    def vocab_fingerprint(self) -> str:
        """sha256 over the (token, id) table, added tokens included."""
        if self._fingerprint is None:
            vocab = self.backend.get_vocab(with_added_tokens=True)
            h = hashlib.sha256()
            for token, i in sorted(vocab.items(), key=lambda kv: kv[1]):
                h.update(f"{i}\x00{token}\x01".encode("utf-8", "surrogatepass"))
            self._fingerprint = h.hexdigest()
        return self._fingerprint

    def same_vocab(self, other: "Tokenizer") -> bool:
        """True when both map every token to the same id (required to pair an SLM with an LLM)."""
        if other is self:
            return True
        if self.vocab_size != other.vocab_size:
            return False
        return self.vocab_fingerprint() == other.vocab_fingerprint()

    def vocab_difference(self, other: "Tokenizer") -> tuple[str, int | None, int | None] | None:
        """None when both map every token to the same id, else one token that differs, as
        ``(token, its id here, its id in other)`` (None where a tokenizer lacks it), lowest id first."""
        if self.same_vocab(other):
            return None
        mine, theirs = self.backend.get_vocab(with_added_tokens=True), other.backend.get_vocab(with_added_tokens=True)
        diffs = [(i, t, theirs.get(t)) for t, i in mine.items() if theirs.get(t) != i]
        diffs += [(j, t, None) for t, j in theirs.items() if t not in mine]
        i, token, j = min(diffs, key=lambda d: d[0])
        return (token, i, j) if token in mine else (token, None, i)

    def __repr__(self) -> str:
        return (f"Tokenizer(vocab_size={self.vocab_size}, eos_token_ids={self.eos_token_ids}, "
                f"chat_template={'yes' if self.chat_template else 'no'})")


def _without_dummy_prefix(backend):
    """``backend`` itself, or a copy that does not prepend "▁" to the text (Metaspace
    pre-tokenizers with a prepend scheme; legacy Llama's Prepend normalizer)."""
    import json

    from tokenizers import Tokenizer as _T

    spec = json.loads(backend.to_str())
    changed = False

    def fix_pre(p):
        nonlocal changed
        if not isinstance(p, dict):
            return p
        if p.get("type") == "Metaspace" and p.get("prepend_scheme", "always") != "never":
            changed = True
            q = {**p, "prepend_scheme": "never"}
            if "add_prefix_space" in q:  # older serialisations
                q["add_prefix_space"] = False
            return q
        if p.get("type") == "Sequence":
            return {**p, "pretokenizers": [fix_pre(q) for q in p.get("pretokenizers", [])]}
        return p

    def fix_norm(n):
        nonlocal changed
        if not isinstance(n, dict):
            return n
        if n.get("type") == "Prepend":
            changed = True
            return None
        if n.get("type") == "Sequence":
            kept = [m for m in (fix_norm(q) for q in n.get("normalizers", [])) if m is not None]
            return {**n, "normalizers": kept}
        return n

    spec["pre_tokenizer"] = fix_pre(spec.get("pre_tokenizer"))
    spec["normalizer"] = fix_norm(spec.get("normalizer"))
    return _T.from_str(json.dumps(spec)) if changed else backend


def is_byte_level(backend) -> bool:
    """A tokenizers backend whose decoder is byte-level BPE (GPT-2's byte alphabet: Qwen, GPT-2,
    Llama 3), alone or within a Sequence: each vocabulary character stands for one byte."""
    spec = json.loads(backend.to_str()).get("decoder") or {}
    kinds = [spec.get("type")] + [d.get("type") for d in spec.get("decoders", []) if isinstance(d, dict)]
    return "ByteLevel" in kinds
