"""load_checkpoint on Hugging Face directories (tiny random Qwen2/Llama written by transformers), config
parsing, Hub id handling, and clear errors for missing/corrupted files. Never unpickles anything."""

import json
import pickle
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from gboost.models.config import SUPPORTED_ARCHITECTURES, ModelConfig
from gboost.models.loader import Checkpoint, load_checkpoint
from gboost.models.sources import HubDownloadError

transformers = pytest.importorskip("transformers")

from model_fixtures import CHATML_TEMPLATE, make_tiny_hf, save_tiny_hf  # noqa: E402


def assert_state_dict_equal(ours: dict, ref: dict, tied: bool):
    ref = {k: v for k, v in ref.items() if not (tied and k == "lm_head.weight")}
    assert set(ours) == set(ref)
    for k, v in ref.items():
        assert ours[k].dtype == torch.float32
        assert torch.equal(ours[k], v.float()), k


@pytest.fixture
def copy_dir(tmp_path):
    count = [0]

    def copy(src):
        count[0] += 1
        dst = tmp_path / f"{src.name}-{count[0]}"
        shutil.copytree(src, dst)
        return dst
    return copy


# ------------------------------------------------------------------------------------ happy paths
def test_qwen2_tied_dir_roundtrip(tiny_qwen2):
    d, model = tiny_qwen2
    ck = load_checkpoint(d, dtype=torch.float32)
    assert isinstance(ck, Checkpoint)
    assert_state_dict_equal(ck.state_dict, model.state_dict(), tied=True)
    assert "lm_head.weight" not in ck.state_dict
    c = ck.config
    assert (c.architecture, c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.num_key_value_heads,
            c.head_dim, c.vocab_size, c.intermediate_size) == ("qwen2", 64, 2, 4, 2, 16, 384, 128)
    assert c.tie_word_embeddings and c.attention_bias
    assert c.rope_theta == 5000.0  # transformers 5 writes it under rope_parameters
    assert c.max_position_embeddings == 256 and c.rms_norm_eps == 1e-6
    assert ck.eos_token_ids == [2] and c.eos_token_ids == [2] and c.bos_token_id == 0
    assert ck.chat_template == CHATML_TEMPLATE
    assert ck.tokenizer.token_to_id("<|im_end|>") == 2
    assert ck.special_tokens["eos_token"] == "<|im_end|>"
    assert ck.source == str(d) and ck.from_cache is False and ck.name == str(d)
    assert ck.config.expected_shapes().keys() == ck.state_dict.keys()


def test_llama_untied_custom_head_dim(tiny_llama):
    d, model = tiny_llama
    ck = load_checkpoint(str(d), dtype="float32")
    assert_state_dict_equal(ck.state_dict, model.state_dict(), tied=False)
    c = ck.config
    assert c.architecture == "llama" and not c.attention_bias and not c.tie_word_embeddings
    assert c.head_dim == 32 and c.q_size == 128 and c.kv_size == 64
    assert ck.state_dict["lm_head.weight"].shape == (384, 64)
    assert not any(k.endswith(".bias") for k in ck.state_dict)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, "bf16", "fp16"])
def test_dtypes(tiny_qwen2, dtype):
    d, model = tiny_qwen2
    ck = load_checkpoint(d, dtype=dtype)
    want = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(dtype, dtype)
    assert all(t.dtype == want for t in ck.state_dict.values()) and ck.dtype == want
    ref = model.state_dict()["model.layers.1.self_attn.q_proj.weight"].to(want)
    assert torch.equal(ck.state_dict["model.layers.1.self_attn.q_proj.weight"], ref)


def test_bad_dtype(tiny_qwen2):
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(tiny_qwen2[0], dtype=torch.int8)
    with pytest.raises(ValueError, match="dtype"):
        load_checkpoint(tiny_qwen2[0], dtype="float8")


def test_sharded_checkpoint(tmp_path, tiny_tokenizer):
    model = make_tiny_hf("qwen2", seed=3)
    d = save_tiny_hf(tmp_path / "sharded", model, tiny_tokenizer, max_shard_size="40KB")
    assert (d / "model.safetensors.index.json").exists()
    assert len(list(d.glob("*.safetensors"))) > 2
    ck = load_checkpoint(d, dtype=torch.float32)
    assert_state_dict_equal(ck.state_dict, model.state_dict(), tied=False)


def test_generation_config_eos_list_and_chat_template_jinja(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    (d / "generation_config.json").write_text(json.dumps({"eos_token_id": [2, 0]}))
    (d / "chat_template.jinja").write_text("{{ messages[0]['content'] }}")  # transformers>=4.50 layout
    ck = load_checkpoint(d, dtype=torch.float32)
    assert ck.eos_token_ids == [2, 0]
    assert ck.chat_template == "{{ messages[0]['content'] }}"
    assert ck.get_tokenizer().eos_token_ids == [2, 0]


def test_tied_checkpoint_with_redundant_lm_head_is_fine(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    sd = load_file(str(d / "model.safetensors"))
    sd["lm_head.weight"] = sd["model.embed_tokens.weight"].clone()
    sd["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    ck = load_checkpoint(d, dtype=torch.float32)
    assert "lm_head.weight" not in ck.state_dict
    assert not any("inv_freq" in k for k in ck.state_dict)


def test_never_unpickles(monkeypatch, tiny_llama):
    def boom(*a, **k):
        raise AssertionError("pickle used")
    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    load_checkpoint(tiny_llama[0], dtype=torch.float32)


# ------------------------------------------------------------------------------------ config
def test_config_defaults_and_validation():
    c = ModelConfig("llama", vocab_size=10, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                    num_attention_heads=4)
    assert c.head_dim == 16 and c.num_key_value_heads == 4 and c.attention_bias is False
    c = ModelConfig("qwen2", vocab_size=10, hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                    num_attention_heads=4, num_key_value_heads=2, eos_token_ids=[5, 5, 7])
    assert c.attention_bias is True and c.eos_token_ids == [5, 7]
    assert ModelConfig.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError, match="multiple of num_key_value_heads"):
        ModelConfig("qwen2", 10, 64, 128, 1, num_attention_heads=4, num_key_value_heads=3)
    with pytest.raises(ValueError, match="not divisible"):
        ModelConfig("qwen2", 10, 66, 128, 1, num_attention_heads=4)
    with pytest.raises(ValueError, match="positive int"):
        ModelConfig("qwen2", 0, 64, 128, 1, num_attention_heads=4)


def test_config_from_hf_dict_variants():
    base = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
            "rope_theta": 1e6, "eos_token_id": 7, "tie_word_embeddings": True}  # transformers 4.x layout
    c = ModelConfig.from_hf_dict(base)
    assert c.rope_theta == 1e6 and c.eos_token_ids == [7] and c.tie_word_embeddings and c.head_dim == 16
    c = ModelConfig.from_hf_dict({**base, "model_type": None, "architectures": ["LlamaForCausalLM"],
                                  "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                                   "high_freq_factor": 4.0,
                                                   "original_max_position_embeddings": 8192}})
    assert c.architecture == "llama" and c.rope_scaling["factor"] == 8.0
    c = ModelConfig.from_hf_dict({**base, "rope_theta": None,
                                  "rope_parameters": {"rope_theta": 3.0, "rope_type": "yarn", "factor": 4.0}})
    assert c.rope_theta == 3.0 and c.rope_scaling == {"rope_type": "yarn", "factor": 4.0}
    hf = transformers.Qwen2Config(vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, rope_theta=123.0)
    assert ModelConfig.from_hf_dict(hf.to_dict()).rope_theta == 123.0


@pytest.mark.parametrize("patch,match", [
    ({"model_type": "mistral", "architectures": ["MistralForCausalLM"]}, "unsupported model architecture 'mistral'"),
    ({"model_type": "gpt2", "architectures": None}, "gboost supports: qwen2, llama"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"model_type": "llama", "attention_bias": True}, "attention_bias"),
    ({"model_type": "llama", "mlp_bias": True}, "mlp_bias"),
    ({"use_sliding_window": True}, "sliding_window"),
    ({"hidden_size": None}, "hidden_size"),
])
def test_config_rejects(patch, match):
    base = {"model_type": "qwen2", "vocab_size": 100, "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 2, "num_attention_heads": 4}
    with pytest.raises(ValueError, match=match):
        ModelConfig.from_hf_dict({**base, **patch})
    assert SUPPORTED_ARCHITECTURES == ("qwen2", "llama")


# ------------------------------------------------------------------------------------ errors
def test_missing_path_is_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a file, a directory, a demo model"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="GGUF file not found|not a file"):
        load_checkpoint(str(tmp_path / "nope.gguf"))


def test_missing_config(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    (d / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(d)


def test_bad_json(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    (d / "config.json").write_text('{"model_type": "qwen2",')
    with pytest.raises(ValueError, match=r"config\.json: invalid JSON"):
        load_checkpoint(d)
    d2 = copy_dir(tiny_qwen2[0])
    (d2 / "tokenizer_config.json").write_text("not json")
    with pytest.raises(ValueError, match=r"tokenizer_config\.json: invalid JSON"):
        load_checkpoint(d2)


def test_unsupported_architecture_dir(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    cfg = json.loads((d / "config.json").read_text())
    cfg.update(model_type="phi3", architectures=["Phi3ForCausalLM"])
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"config\.json.*unsupported model architecture 'phi3'.*qwen2, llama"):
        load_checkpoint(d)


def test_missing_tensor(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    sd = load_file(str(d / "model.safetensors"))
    del sd["model.layers.1.mlp.up_proj.weight"]
    save_file(sd, str(d / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(ValueError, match=r"missing 1 tensor\(s\): model\.layers\.1\.mlp\.up_proj\.weight"):
        load_checkpoint(d)


def test_wrong_shape(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    cfg = json.loads((d / "config.json").read_text())
    cfg["intermediate_size"] = 96
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="has shape"):
        load_checkpoint(d)


def test_truncated_safetensors(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    f = d / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match=r"model\.safetensors: cannot read safetensors file"):
        load_checkpoint(d)


def test_missing_shard(tmp_path, tiny_tokenizer):
    d = save_tiny_hf(tmp_path / "sh", make_tiny_hf("llama", seed=4), tiny_tokenizer, max_shard_size="40KB")
    victim = sorted(d.glob("model-*.safetensors"))[1]
    victim.unlink()
    with pytest.raises(FileNotFoundError, match=victim.name):
        load_checkpoint(d)


def test_pickle_only_checkpoint_refused(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    (d / "model.safetensors").unlink()
    (d / "pytorch_model.bin").write_bytes(b"\x80\x04not really a pickle")
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(d)
    with pytest.raises(ValueError, match="pickle"):
        load_checkpoint(d / "pytorch_model.bin")


def test_missing_tokenizer(copy_dir, tiny_qwen2):
    d = copy_dir(tiny_qwen2[0])
    (d / "tokenizer.json").unlink()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_checkpoint(d)


def test_empty_dir(tmp_path):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(tmp_path / "m")


# ------------------------------------------------------------------------------------ hub
def test_hub_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as c
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True, raising=False)
    with pytest.raises(HubDownloadError, match="could not download 'someorg/some-model'.*offline"):
        load_checkpoint("someorg/some-model", cache_dir=tmp_path)


def test_hub_downloads_safetensors_and_json_only(monkeypatch, tiny_qwen2, tmp_path):
    import huggingface_hub

    calls = {}

    def fake_snapshot_download(repo_id, **kw):
        calls.update(kw, repo_id=repo_id)
        return str(tiny_qwen2[0])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    ck = load_checkpoint("someorg/tiny-qwen2", dtype=torch.float32, cache_dir=tmp_path)
    assert calls["repo_id"] == "someorg/tiny-qwen2"
    assert calls["cache_dir"] == str(tmp_path / "hub")
    pats = calls["allow_patterns"]
    assert "*.safetensors" in pats and "*.json" in pats
    assert not any(p.endswith((".bin", ".pt", ".pth", ".pkl", "*")) and p != "*.safetensors"
                   and p != "*.json" and p != "*.jinja" for p in pats)
    assert ck.name == "someorg/tiny-qwen2" and ck.source == str(tiny_qwen2[0])
    assert_state_dict_equal(ck.state_dict, tiny_qwen2[1].state_dict(), tied=True)
