"""Builders for tiny checkpoints used by tests/models (HF directories via transformers, GGUF via GGUFWriter)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<tool_call>"]
TINY_VOCAB = 384  # model rows; the tokenizer has fewer ids (padded like Qwen's 151936 > 151665)

CHATML_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}"
    "{%- else %}{{- '<|im_start|>system\\nYou are a tiny model.<|im_end|>\\n' }}{%- endif %}"
    "{%- if tools %}{{- '<|im_start|>tools\\n' }}{%- for t in tools %}{{- t | tojson }}{%- endfor %}"
    "{{- '<|im_end|>\\n' }}{%- endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{- raise_exception('bad role: ' + message['role']) }}{%- endif %}"
    "{%- if not (message['role'] == 'system' and loop.first) %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endif %}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

CORPUS = [
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The quick brown fox jumps over the lazy dog. 1234567890 times!",
    "Step 1: 2 + 3 = 5. Step 2: 5 * 4 = 20. The answer is 20.",
    "import numpy as np\nx = np.zeros((3, 4))\nprint(x.shape)  # (3, 4)\n",
    "Ünïcödé têxt, 中文字符, emoji 🙂 and more text text text.",
] * 3



def make_tiny_tokenizer():
    """A byte-level BPE trained on CORPUS, Qwen2-style pre-tokenizer, ChatML specials."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=330, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  special_tokens=SPECIALS, show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    tok.add_tokens([AddedToken(t, normalized=False, special=False) for t in USER_DEFINED])
    assert tok.get_vocab_size() < TINY_VOCAB
    return tok


SPM_SPECIALS = ["<unk>", "<s>", "</s>"]


def make_spm_vocab(vocab_size: int = 600):
    """A SentencePiece-style ("llama") vocabulary trained on CORPUS, laid out as llama.cpp writes
    one: <unk> <s> </s>, the 256 byte-fallback tokens <0x00>..<0xFF>, then pieces ("▁the") scored
    by merge rank, and one user-defined token. Returns (tokens, scores, token_types)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    byte_tokens = [f"<0x{b:02X}>" for b in range(256)]
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first", split=True)
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPM_SPECIALS + byte_tokens,
                                  show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    tokens = [by_id[i] for i in range(len(by_id))] + ["<tool_call>"]
    types = [2, 3, 3] + [6] * 256 + [1] * (len(tokens) - 260) + [4]
    scores = [0.0] * 259 + [-float(i) for i in range(len(tokens) - 260)] + [0.0]
    return tokens, scores, types


def write_tokenizer_files(d: Path, tok, chat_template: str | None = CHATML_TEMPLATE) -> None:
    tok.save(str(d / "tokenizer.json"))
    cfg = {"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
           "bos_token": None, "add_bos_token": False, "model_max_length": 512}
    if chat_template is not None:
        cfg["chat_template"] = chat_template
    (d / "tokenizer_config.json").write_text(json.dumps(cfg, indent=1))


def make_tiny_hf(arch: str, seed: int = 0, **kw):
    """gboost.testing.tiny_hf_model at this folder's shapes, every tensor distinctive (norms start
    at 1, biases at 0 otherwise)."""
    from gboost.testing import tiny_hf_model
    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, rms_norm_eps=1e-6,
                  rope_theta=5000.0, tie_word_embeddings=False, bos_token_id=0, eos_token_id=2)
    return tiny_hf_model(arch, seed, init="spread", **{**common, **kw})


def save_tiny_hf(d: Path, model, tok, chat_template: str | None = CHATML_TEMPLATE, **save_kw) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(d), safe_serialization=True, **save_kw)
    write_tokenizer_files(d, tok, chat_template)
    return d


def write_gguf(path: Path, model, tok, *, quant: dict[str, str] | None = None, pre: str = "qwen2",
               chat_template: str | None = CHATML_TEMPLATE, arch: str | None = None,
               skip: tuple[str, ...] = (), permute: bool | None = None, spm=None) -> Path:
    """Write `model` (a transformers model) as llama.cpp's converter would: names, llama q/k permutation,
    tokenizer as gpt2 BPE metadata, or with `spm=(tokens, scores, types)` as a SentencePiece
    ("llama") vocabulary without merges. `quant` maps HF names to ggml type names (default F32)."""
    import gguf
    from gguf import GGMLQuantizationType as Q

    from gboost.models.gguf_format import gguf_name, permute_qk

    cfg = model.config
    arch = arch or cfg.model_type
    heads, kv = cfg.num_attention_heads, cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // heads
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name("tiny")
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_vocab_size(cfg.vocab_size)

    if spm is not None:
        tokens, scores, types = spm
        w.add_tokenizer_model("llama")
        w.add_token_list(tokens)
        w.add_token_scores(scores)
        w.add_token_types(types)
        w.add_unk_token_id(0)
        w.add_bos_token_id(1)
        w.add_eos_token_id(2)
    else:
        vocab = tok.get_vocab(with_added_tokens=True)
        by_id = {i: t for t, i in vocab.items()}
        tokens, types = [], []
        for i in range(cfg.vocab_size):
            if i in by_id:
                t = by_id[i]
                tokens.append(t)
                types.append(3 if t in SPECIALS else 4 if t in USER_DEFINED else 1)
            else:
                tokens.append(f"[PAD{i}]")
                types.append(5)
        merges = json.loads(tok.to_str())["model"]["merges"]
        merges = [m if isinstance(m, str) else " ".join(m) for m in merges]
        w.add_tokenizer_model("gpt2")
        w.add_tokenizer_pre(pre)
        w.add_token_list(tokens)
        w.add_token_types(types)
        w.add_token_merges(merges)
        w.add_bos_token_id(vocab["<|endoftext|>"])
        w.add_eos_token_id(vocab["<|im_end|>"])
        w.add_pad_token_id(vocab["<|endoftext|>"])
        w.add_add_bos_token(False)
    if chat_template is not None:
        w.add_chat_template(chat_template)

    do_permute = (cfg.model_type == "llama") if permute is None else permute
    for name, t in model.state_dict().items():
        if name in skip or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        data = t.detach().float()
        if do_permute and name.endswith(("q_proj.weight", "k_proj.weight")):
            data = permute_qk(data, heads if "q_proj" in name else kv)
        data = data.numpy()
        qtype = Q[(quant or {}).get(name, "F32")]
        if qtype == Q.F32:
            w.add_tensor(gguf_name(name), data)
        elif qtype == Q.F16:
            w.add_tensor(gguf_name(name), data.astype(np.float16))
        else:
            w.add_tensor(gguf_name(name), gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


#: text the tokenizer tests encode: whitespace, Unicode, code, chat markup, the empty string
STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing   ",
    "Ünïcödé têxt, 中文字符, emoji 🙂 — naïve café",
    "Numbers 1234567890 and 3.14159, 42!",
    "def fibonacci(n):\n    if n < 2:\n        return n\n    return fibonacci(n - 1) + fibonacci(n - 2)\n",
    "import numpy as np\r\n\tx = np.zeros((3, 4))  # tabs & CRLF\n\n\n",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
    "don't won't I'm you'll they've she'd",
    "<tool_call>{\"name\": \"f\"}</tool_call>",
    "",
]


def forbid_dequantize(monkeypatch):
    """Make any GGUF read or dequantization fail: for loads the cache must serve."""
    from gboost.models import gguf_loader

    def boom(*a, **k):
        raise AssertionError("dequantized although the cache should have served this load")
    monkeypatch.setattr(gguf_loader, "dequantize_tensor", boom)
    monkeypatch.setattr(gguf_loader, "open_gguf", boom)
