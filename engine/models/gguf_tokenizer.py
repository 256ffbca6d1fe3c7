"""GGUF tokenizer metadata -> a `tokenizers.Tokenizer` equal to what transformers builds from it.

`tokenizer.ggml.model` "gpt2": byte-level BPE (Qwen2, Llama 3, SmolLM2), with the split regex
that `tokenizer.ggml.pre` names.  "llama": SentencePiece BPE (Llama 2, Mistral, TinyLlama):
`▁` for spaces, `<0xNN>` byte-fallback tokens, merges from the file or, as SentencePiece files
have none, recovered from the token scores.
"""
from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger("gboost.models.gguf_loader")

# Split regexes that llama.cpp's `tokenizer.ggml.pre` names stand for (as transformers maps them).
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZER_SPLITS = {
    "qwen2": _QWEN2_SPLIT,
    "deepseek-r1-qwen": _QWEN2_SPLIT,
    "megrez": _QWEN2_SPLIT,
    "llama3": _LLAMA3_SPLIT,
    "llama-v3": _LLAMA3_SPLIT,
    "llama-bpe": _LLAMA3_SPLIT,
    "smaug-bpe": _LLAMA3_SPLIT,
    "dbrx": _LLAMA3_SPLIT,
    "falcon3": _LLAMA3_SPLIT,
}
# `smollm` (SmolLM/SmolLM2): digits one by one, then GPT-2's split -- what llama.cpp does and what
# SmolLM2's own tokenizer.json says (transformers' GGUF path falls back to plain GPT-2 here).
_DIGITS_THEN_GPT2 = {"smollm"}
_GPT2_DEFAULT = {"default", "gpt2", "gpt-2"}

# end-of-generation tokens llama.cpp recognizes by text (when present as control tokens)
_EOG_TEXTS = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>", "<|eom_id|>", "<|end|>", "<end_of_turn>",
              "<|end_of_text|>")

TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4
SPIECE_SPACE = "\u2581"  # SentencePiece's visible space


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode table (the byte-level BPE alphabet)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def build_byte_level_bpe(
    tokens: list[str],
    merges: list[str],
    token_types: list[int] | None,
    pre: str | None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    add_bos: bool = False,
    add_eos: bool = False,
):
    """A `tokenizers.Tokenizer` equal to what transformers builds from the same GGUF fields."""
    from tokenizers import Regex, Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    spelling = bytes_to_unicode()
    alphabet = set(spelling.values())
    vocab: dict[str, int] = {}
    for index, token in enumerate(tokens):
        if not set(token) <= alphabet:  # stored as raw text: respell its bytes
            token = "".join(spelling[b] for b in token.encode("utf-8"))
        vocab[token] = index
    tok = Tokenizer(BPE(vocab=vocab, merges=_merge_pairs(merges), dropout=None, continuing_subword_prefix="",
                        end_of_word_suffix="", fuse_unk=False))
    if pre in PRE_TOKENIZER_SPLITS:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(PRE_TOKENIZER_SPLITS[pre]), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    elif pre in _DIGITS_THEN_GPT2:
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ])
    else:
        if pre not in _GPT2_DEFAULT and pre is not None:
            log.warning("unknown GGUF pre-tokenizer %r; using GPT-2's split regex", pre)
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()

    # a control token outside the byte alphabet is a llama.cpp mislabel: adding it would grow the vocab
    _add_marked_tokens(tok, tokens, token_types, control_ok=lambda t: set(t) <= alphabet,
                       user_ok=vocab.__contains__)
    tok.post_processor = _bos_eos_template(tokens, bos_token_id if add_bos else None,
                                           eos_token_id if add_eos else None)
    return tok


def _merge_pairs(merges: list[str]) -> list[tuple[str, str]]:
    """GGUF's "a b" merge strings as pairs."""
    pairs = []
    for m in merges:
        a, sep, b = m.partition(" ")
        if not sep:
            raise ValueError(f"malformed BPE merge {m!r} in GGUF tokenizer")
        pairs.append((a, b))
    return pairs


def merges_from_scores(tokens: list[str], scores: list[float]) -> list[tuple[str, str]]:
    """BPE merges a SentencePiece vocabulary implies: every split of a token into two tokens of
    the vocabulary, best-scored token first (ties: longer left piece, then longer right piece,
    then vocabulary order).  transformers' `generate_merges`, which is what
    its GGUF loading uses, orders them the same way."""
    vocab = {t: i for i, t in enumerate(tokens)}
    found = []
    for token, score in zip(tokens, scores):
        splits = [(token[:k], token[k:]) for k in range(1, len(token))
                  if token[:k] in vocab and token[k:] in vocab]
        splits.sort(key=lambda lr: (vocab[lr[0]], vocab[lr[1]]))
        found += [(a, b, float(score)) for a, b in splits]
    found.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)  # stable: vocabulary order in ties
    return [(a, b) for a, b, _ in found]


def build_sentencepiece_bpe(
    tokens: list[str],
    scores: list[float] | None,
    merges: list[str] | None,
    token_types: list[int] | None,
    unk_token_id: int | None = None,
    bos_token_id: int | None = None,
    eos_token_id: int | None = None,
    add_bos: bool = True,
    add_eos: bool = False,
):
    """A `tokenizers.Tokenizer` for a SentencePiece ("llama") GGUF vocabulary, as transformers'
    LlamaTokenizer builds it: BPE with byte fallback, `▁` prepended to the first word only."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers
    from tokenizers.models import BPE

    vocab = {t: i for i, t in enumerate(tokens)}
    if merges:
        pairs = _merge_pairs(merges)
    else:
        if scores is None or len(scores) != len(tokens):
            raise ValueError("SentencePiece GGUF tokenizer without merges needs one score per token")
        pairs = merges_from_scores(tokens, scores)
    unk = tokens[unk_token_id] if unk_token_id is not None else None
    tok = Tokenizer(BPE(vocab=vocab, merges=pairs, unk_token=unk, fuse_unk=True, byte_fallback=True, dropout=None))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=SPIECE_SPACE, prepend_scheme="first", split=False)
    tok.decoder = decoders.Sequence([decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(content=" ", left=1)])
    _add_marked_tokens(tok, tokens, token_types)
    tok.post_processor = _bos_eos_template(tokens, bos_token_id if add_bos else None,
                                           eos_token_id if add_eos else None)
    return tok


def _add_marked_tokens(tok, tokens: list[str], token_types: list[int] | None,
                       control_ok=lambda t: True, user_ok=lambda t: True) -> None:
    """Tokens the file marks control as special added tokens, user-defined ones as plain added
    tokens (llama.cpp matches both whole in the text), as transformers' GGUF loading does."""
    from tokenizers import AddedToken
    if token_types is None:
        return
    control = [AddedToken(t, normalized=False, special=True)
               for t, ty in zip(tokens, token_types) if ty == TOKEN_TYPE_CONTROL and control_ok(t)]
    if control:
        tok.add_special_tokens(control)
    user = [AddedToken(t, normalized=False, special=False)
            for t, ty in zip(tokens, token_types) if ty == TOKEN_TYPE_USER_DEFINED and user_ok(t)]
    if user:
        tok.add_tokens(user)


def _bos_eos_template(tokens: list[str], bos: int | None, eos: int | None):
    from tokenizers import processors
    single, special = ["$A"], []
    if bos is not None:
        single = [tokens[bos]] + single
        special.append((tokens[bos], bos))
    if eos is not None:
        single = single + [tokens[eos]]
        special.append((tokens[eos], eos))
    pair = single + [s if s != "$A" else "$B:1" for s in single]
    return processors.TemplateProcessing(single=single, pair=pair, special_tokens=special)


def tokenizer_from_gguf(meta: dict[str, Any], path: str = ""):
    """(tokenizers.Tokenizer, special_tokens {bos_token,...}, eos_token_ids, add_bos)."""
    model = meta.get("tokenizer.ggml.model")
    tokens = meta.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ValueError(f"GGUF file {path} has no tokenizer (tokenizer.ggml.tokens missing)")
    if model not in ("gpt2", "llama"):
        raise ValueError(f"GGUF file {path}: tokenizer model {model!r} is not supported "
                         "(byte-level BPE 'gpt2' and SentencePiece 'llama' are)")
    merges = meta.get("tokenizer.ggml.merges")
    if model == "gpt2" and not merges:
        raise ValueError(f"GGUF file {path}: byte-level BPE tokenizer without tokenizer.ggml.merges")
    token_types = meta.get("tokenizer.ggml.token_type")
    n = len(tokens)

    def tid(key: str) -> int | None:
        v = meta.get(f"tokenizer.ggml.{key}")
        if v is None:
            return None
        v = int(v)
        if not 0 <= v < n:
            raise ValueError(f"GGUF file {path}: tokenizer.ggml.{key}={v} out of range (vocab {n})")
        return v

    bos, eos, unk, pad = tid("bos_token_id"), tid("eos_token_id"), tid("unknown_token_id"), tid("padding_token_id")
    # llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise (so does transformers)
    add_bos = bool(meta.get("tokenizer.ggml.add_bos_token", model == "llama"))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    if model == "llama":
        tok = build_sentencepiece_bpe(tokens, meta.get("tokenizer.ggml.scores"), merges, token_types,
                                      unk, bos, eos, add_bos, add_eos)
    else:
        tok = build_byte_level_bpe(tokens, merges, token_types, meta.get("tokenizer.ggml.pre"), bos, eos,
                                   add_bos, add_eos)

    eos_ids = [i for i in (eos, tid("eot_token_id"), tid("eom_token_id")) if i is not None]
    for text in _EOG_TEXTS:
        i = tok.token_to_id(text)
        if i is not None and (token_types is None or token_types[i] == TOKEN_TYPE_CONTROL) and i not in eos_ids:
            eos_ids.append(i)
    special = {
        "bos_token": tokens[bos] if bos is not None else None,
        "eos_token": tokens[eos] if eos is not None else None,
        "unk_token": tokens[unk] if unk is not None else None,
        "pad_token": tokens[pad] if pad is not None else None,
    }
    return tok, special, eos_ids, add_bos


