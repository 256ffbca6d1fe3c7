"""What one request may cost before any work starts: the size of its body, the nesting of its JSON,
and a question's length in bytes against what the models' positions could ever hold."""
from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:
    from .errors import APIError

__all__ = ["DEFAULT_MAX_BODY_BYTES", "MAX_JSON_DEPTH", "BodyLimit", "check_body_limit", "max_token_bytes", "must_be_too_long",
           "parse_json_body", "question_byte_limit", "refuse_too_long_text", "text_byte_limit"]

#: the largest request body served (``gboost serve --max-body-bytes``): far above any question a
#: model's context holds, far below what would cost the server real memory to read and decode
DEFAULT_MAX_BODY_BYTES = 4 << 20


def check_body_limit(max_bytes: int) -> int:
    """``max_bytes`` if it is a usable body limit (a positive number of bytes), else ValueError."""
    if max_bytes < 1:
        raise ValueError(f"the body limit must be a positive number of bytes, got {max_bytes}")
    return max_bytes


def _too_large(limit: int) -> "APIError":
    from .errors import APIError  # here, not at the top: the CLI reads this module's default, light

    return APIError(413, f"request body is larger than this server's limit of {limit} bytes",
                    code="request_too_large", headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware: a body over ``max_bytes`` is a 413 before it is read in full. A declared
    Content-Length over the limit is answered at once, nothing read; a chunked (or understated)
    body raises the 413 from ``receive`` as soon as the bytes read so far pass the limit, so the
    route never holds more than the limit plus one chunk."""

    def __init__(self, app, max_bytes: int) -> None:
        self.app, self.max_bytes = app, check_body_limit(max_bytes)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.max_bytes
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.strip().isdigit() and int(declared) > limit:
            from .errors import error_response

            err = _too_large(limit)
            await error_response(err.status, err.message, code=err.code, headers=err.headers)(scope, receive, send)
            return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _too_large(limit)  # an APIError: the app's handler answers it as JSON
            return message

        await self.app(scope, counted, send)


#: NFC, the one normalizer the byte bound below admits, composes at most 3 UTF-8 bytes into 1
#: (Hangul jamo L+V+T, 9 bytes, into one 3-byte syllable; a letter and its marks shrink less)
_NFC_SHRINK = 3


def max_token_bytes(tok) -> Optional[int]:
    """The most UTF-8 bytes of text one token of ``tok`` (a gboost Tokenizer) can stand for, or None
    where no such bound holds: only a byte-level BPE (every byte kept, no normalizer but NFC) has one.
    Each vocabulary string's own UTF-8 length bounds it (a byte-level symbol is one byte, written as
    one to two); added tokens (matched in the text as they are written) count too."""
    from gboost.models.tokenizer import is_byte_level
    backend = getattr(tok, "backend", None)
    if backend is None or not is_byte_level(backend):
        return None
    norm = backend.normalizer
    if norm is not None and type(norm).__name__ != "NFC":
        return None
    longest = max(len(s.encode("utf-8")) for s in backend.get_vocab(with_added_tokens=True))
    return longest * (_NFC_SHRINK if norm is not None else 1)


def text_byte_limit(tok, max_positions: int) -> Optional[int]:
    """Bytes above which a text must be too long for ``max_positions``, or None (no bound known). A
    prompt holding the text's B bytes (whitespace at its ends aside: a template may trim it) has at
    least B / max_token_bytes tokens, so B > max_positions * max_token_bytes can never fit; below
    that the exact check (tokenize, then count) decides."""
    per = max_token_bytes(tok)
    return None if per is None else max_positions * per


def question_byte_limit(executor) -> Optional[int]:
    """``text_byte_limit`` for a question on the SLM of a solve executor (None for one without)."""
    tok, slm = getattr(executor, "tok", None), getattr(executor, "slm", None)
    n = getattr(getattr(slm, "model", None), "max_positions", None)
    return None if tok is None or not isinstance(n, int) else text_byte_limit(tok, n)


def refuse_too_long_text(text: str, backend, param: str) -> None:
    """A 400 (``context_length_exceeded``) for a prompt text that ``backend`` (a completions
    backend with a ``text_byte_limit``) could never fit, before it is tokenized."""
    limit = getattr(backend, "text_byte_limit", None)
    if must_be_too_long(text, limit):
        from .errors import APIError
        raise APIError(400, f"This model's maximum context length is {backend.max_model_len} tokens, and a "
                            f"prompt of more than {limit} bytes cannot fit in it. Please shorten the prompt.",
                       param=param, code="context_length_exceeded")


def must_be_too_long(text: str, byte_limit: Optional[int]) -> bool:
    """``text`` has more UTF-8 bytes than ``byte_limit`` (ends trimmed); a str's length in code points
    bounds its bytes from below (1) and above (4), so most texts are not encoded to count them."""
    if byte_limit is None:
        return False
    text = text.strip()
    if len(text) > byte_limit or 4 * len(text) <= byte_limit:
        return len(text) > byte_limit
    return len(text.encode("utf-8", "surrogatepass")) > byte_limit


#: deepest JSON nesting a body may have (ours need 3). Deeper values would reach code that recurses
#: (pydantic, repr in error messages) on the event loop's already deep stack.
MAX_JSON_DEPTH = 32
_TOO_DEEP = f"request body is not valid JSON: nested too deeply (more than {MAX_JSON_DEPTH} levels)"


def parse_json_body(raw: bytes):
    """The decoded body (None if empty). Anything json.loads refuses is a 400, never a 500: syntax,
    encoding, nesting deeper than the interpreter's recursion limit (RecursionError), and integer
    literals longer than Python's digit limit (ValueError); so is nesting past MAX_JSON_DEPTH."""
    from .errors import APIError

    if not raw:
        return None
    try:
        data = json.loads(raw)
    except RecursionError:
        raise APIError(400, _TOO_DEEP) from None
    except (ValueError, UnicodeDecodeError) as e:  # JSONDecodeError is a ValueError
        msg = str(e)
        if "integer string conversion" in msg:  # Python's own message names sys.set_int_max_str_digits
            msg = f"an integer literal has more than {sys.get_int_max_str_digits()} digits"
        raise APIError(400, f"request body is not valid JSON: {msg}") from None
    if _depth_exceeds(data, MAX_JSON_DEPTH):
        raise APIError(400, _TOO_DEEP)
    return data


def _depth_exceeds(obj, limit: int) -> bool:
    """Whether containers nest more than ``limit`` deep (iterative: no recursion to exhaust)."""
    stack = [(obj, 1)]
    while stack:
        o, d = stack.pop()
        items = o.values() if isinstance(o, dict) else o if isinstance(o, list) else None
        if items is None:
            continue
        if d > limit:
            return True
        stack.extend((v, d + 1) for v in items if isinstance(v, (dict, list)))
    return False
