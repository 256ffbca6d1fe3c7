"""GGUF loading: tiny GGUFs written with gguf.GGUFWriter (llama q/k permutation, quantized tensors,
tokenizer metadata), the safetensors cache and clear errors (the real GGUF files: test_gguf_real.py)."""

import json

import gguf
import numpy as np
import pytest
import torch

from gboost.models import gguf_loader
from gboost.models.gguf_format import permute_qk, unpermute_qk
from gboost.models.loader import load_checkpoint

transformers = pytest.importorskip("transformers")

from model_fixtures import CHATML_TEMPLATE, STRINGS, forbid_dequantize, make_spm_vocab, make_tiny_hf, write_gguf  # noqa: E402

# q/k of layer 0 quantized (permutation applied to dequantized rows), a mix of types elsewhere
LLAMA_QUANT = {
    "model.layers.0.self_attn.q_proj.weight": "Q8_0",
    "model.layers.0.self_attn.k_proj.weight": "Q8_0",
    "model.layers.1.self_attn.q_proj.weight": "Q4_0",
    "model.layers.0.mlp.gate_proj.weight": "Q5_0",
    "model.layers.1.mlp.down_proj.weight": "Q5_1",
    "model.embed_tokens.weight": "F16",
}
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


def test_second_load_served_from_cache(qwen2_gguf, tmp_path, monkeypatch):
    path, _ = qwen2_gguf
    cache = tmp_path / "cache"
    first = load_checkpoint(path, dtype=torch.float32, cache_dir=cache)
    assert first.from_cache is False
    entry = cache / "gguf" / f"{first.sha256[:32]}-v{gguf_loader.CACHE_FORMAT}"
    assert {p.name for p in entry.iterdir()} == {"meta.json", "tokenizer.json", "weights.float32.safetensors"}
    assert first.sha256 == gguf_loader.sha256_file(path)

    forbid_dequantize(monkeypatch)
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


def test_gguf_tensor_of_an_unreadable_type_is_named(tmp_path, tiny_tokenizer, monkeypatch):
    """A type gguf's dequantizer lacks (Q8_1, the I* types...) is an error naming tensor and type;
    here Q5_1 stands in for one, its dequantization made to fail as gguf fails for those."""
    model = make_tiny_hf("qwen2", seed=16)
    path = write_gguf(tmp_path / "m.gguf", model, tiny_tokenizer, quant={"model.layers.1.mlp.down_proj.weight": "Q5_1"})
    real = gguf.quants.dequantize

    def lacking(data, qtype):
        if qtype == gguf.GGMLQuantizationType.Q5_1:
            raise NotImplementedError("Dequantization for Q5_1 is not yet implemented")
        return real(data, qtype)
    monkeypatch.setattr(gguf.quants, "dequantize", lacking)
    with pytest.raises(ValueError, match=r"m\.gguf: tensor blk\.1\.ffn_down\.weight is stored as Q5_1, a type gboost "
                                         r"cannot read"):
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


def test_directory_holding_one_gguf_and_dtype_strings(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("qwen2", seed=17)
    write_gguf(tmp_path / "only.gguf", model, tiny_tokenizer)
    ck = load_checkpoint(tmp_path, dtype="bf16", cache_dir=tmp_path / "c")
    assert ck.source == str(tmp_path / "only.gguf") and ck.dtype == torch.bfloat16
    assert torch.equal(ck.state_dict["model.norm.weight"], model.state_dict()["model.norm.weight"].bfloat16())
