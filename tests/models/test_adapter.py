"""LoRA adapters merged at load, against peft's own merged model (transformers + peft as the
reference, a tiny Qwen2 written on the spot, rank and alpha not 1), and every bad adapter as a
one-line error that leaves nothing loaded."""
import json
import shutil

import pytest
import torch

from gboost.engine import Engine
from gboost.models.adapter import AdapterError, read_adapter

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from model_fixtures import make_tiny_hf, save_tiny_hf  # noqa: E402

TARGETS = ["q_proj", "v_proj", "o_proj", "down_proj"]


@pytest.fixture(scope="module")
def base_and_adapter(tmp_path_factory, tiny_tokenizer_module):
    d = tmp_path_factory.mktemp("lora")
    base = make_tiny_hf("qwen2", seed=3)
    base_dir = save_tiny_hf(d / "base", base, tiny_tokenizer_module)
    cfg = peft.LoraConfig(r=3, lora_alpha=7, target_modules=TARGETS, init_lora_weights=False, lora_dropout=0.0)
    torch.manual_seed(4)
    tuned = peft.get_peft_model(make_tiny_hf("qwen2", seed=3), cfg)   # B random too: the delta is not 0
    tuned.save_pretrained(str(d / "adapter"), safe_serialization=True)
    merged = tuned.merge_and_unload().eval()
    return base_dir, d / "adapter", base.eval(), merged


@pytest.fixture(scope="module")
def tiny_tokenizer_module():
    from model_fixtures import make_tiny_tokenizer
    return make_tiny_tokenizer()


def _logits(eng: Engine, role: str, ids: list[int]) -> torch.Tensor:
    seq = eng.role(role).new_sequence(eng.cache, ids)
    out = eng.role(role).runner.run([seq], "all")[0]
    eng.cache.free(seq)
    return out.float()


def _ref(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


IDS = [5, 17, 3, 99, 41, 8, 250, 7, 12]


def test_a_merged_adapter_gives_peft_merged_logits_and_the_base_stays_untuned(base_and_adapter):
    base_dir, adapter_dir, base, merged = base_and_adapter
    eng = Engine.from_pretrained(str(base_dir), base=str(base_dir), slm_adapter=str(adapter_dir), dtype="float32",
                                 num_blocks=64, adapter_mode="merge")
    ref_tuned, ref_base = _ref(merged, IDS), _ref(base, IDS)
    tol = 1e-4 * ref_tuned.abs().max().item()   # fp32 sums in another order: relative 1e-4 of the largest logit
    assert (ref_tuned - ref_base).abs().max().item() > 100 * tol      # the adapter changes the logits
    assert (_logits(eng, "slm", IDS) - ref_tuned).abs().max().item() <= tol
    assert (_logits(eng, "base", IDS) - ref_base).abs().max().item() <= tol
    assert eng.role("slm").key != eng.role("base").key


def test_the_adapter_reads_rank_alpha_and_targets(base_and_adapter):
    _, adapter_dir, _, _ = base_and_adapter
    a = read_adapter(adapter_dir)
    assert a.rank == 3 and a.scaling == pytest.approx(7 / 3)
    assert len(a.pairs) == 2 * len(TARGETS) and all(m.split(".")[-1] in TARGETS for m in a.pairs)


def _broken(tmp_path, adapter_dir, edit_config=None, weights=None, drop=None):
    d = tmp_path / "bad"
    shutil.copytree(adapter_dir, d)
    if edit_config:
        cfg = json.loads((d / "adapter_config.json").read_text())
        cfg.update(edit_config)
        (d / "adapter_config.json").write_text(json.dumps(cfg))
    if weights is not None:
        (d / "adapter_model.safetensors").write_bytes(weights)
    if drop:
        (d / drop).unlink()
    return d


@pytest.mark.parametrize("how, match", [
    (dict(drop="adapter_config.json"), "adapter_config.json: missing"),
    (dict(drop="adapter_model.safetensors"), "adapter_model.safetensors: missing"),
    (dict(weights=b"\x00garbage"), "not a readable safetensors file"),
    (dict(edit_config={"use_dora": True}), "DoRA not supported"),
    (dict(edit_config={"peft_type": "IA3"}), "only LoRA adapters"),
    (dict(edit_config={"r": 5}), "not rank r=5"),
    (dict(edit_config={"bias": "all"}), "trained biases not supported"),
])
def test_a_bad_adapter_is_a_one_line_error_naming_the_file(tmp_path, base_and_adapter, how, match):
    base_dir, adapter_dir, _, _ = base_and_adapter
    bad = _broken(tmp_path, adapter_dir, **how)
    with pytest.raises(AdapterError, match=match) as e:
        Engine.from_pretrained(str(base_dir), slm_adapter=str(bad), dtype="float32", num_blocks=16)
    assert "\n" not in str(e.value) and str(bad) in str(e.value)


def test_an_adapter_for_another_base_model_is_refused(tmp_path, base_and_adapter, tiny_tokenizer_module):
    _, adapter_dir, _, _ = base_and_adapter
    other = save_tiny_hf(tmp_path / "other", make_tiny_hf("qwen2", seed=5, hidden_size=32, intermediate_size=64),
                         tiny_tokenizer_module)
    with pytest.raises(AdapterError, match="another base model"):
        Engine.from_pretrained(str(other), slm_adapter=str(adapter_dir), dtype="float32", num_blocks=16)
    fewer = save_tiny_hf(tmp_path / "fewer", make_tiny_hf("qwen2", seed=5, num_hidden_layers=1), tiny_tokenizer_module)
    with pytest.raises(AdapterError, match="is not in this model"):
        Engine.from_pretrained(str(fewer), slm_adapter=str(adapter_dir), dtype="float32", num_blocks=16)


def test_a_pickled_adapter_is_never_loaded(tmp_path, base_and_adapter):
    base_dir, adapter_dir, _, _ = base_and_adapter
    bad = _broken(tmp_path, adapter_dir, drop="adapter_model.safetensors")
    (bad / "adapter_model.bin").write_bytes(b"\x80\x04 not to be unpickled")
    with pytest.raises(AdapterError, match="pickle: not loaded"):
        read_adapter(bad)


def test_a_shipped_adapter_is_found_by_name_and_a_directory_of_that_name_wins(tmp_path, monkeypatch,
                                                                            base_and_adapter):
    from gboost.models import adapter as mod
    shipped = tmp_path / "shipped"
    shutil.copytree(base_and_adapter[1], shipped / "demo-adapter")
    monkeypatch.setattr(mod, "SHIPPED", shipped)
    assert mod.shipped_adapters() == ["demo-adapter"]
    assert read_adapter("demo-adapter").path == shipped / "demo-adapter"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo-adapter").mkdir()  # the user's own directory of that name: read (and refused)
    with pytest.raises(AdapterError, match="demo-adapter/adapter_config.json: missing"):
        read_adapter("demo-adapter")
    with pytest.raises(AdapterError, match="shipped: demo-adapter"):
        read_adapter("no-such-adapter")


def test_the_shipped_demo_adapter_fits_the_demo_slm():
    """Rank, alpha and every target of each of the 0.5B's 24 layers, at the shapes of its weights
    (hidden 896, 2 KV heads of 64, MLP 4864), so it merges onto the demo SLM."""
    from gboost.models.adapter import shipped_adapters
    name = "gsm8k-qwen2.5-coder-0.5b"
    if name not in shipped_adapters():
        pytest.skip("the demo adapter is not in this checkout")
    a = read_adapter(name)
    card = json.loads((a.path / "gboost_card.json").read_text())
    assert card["base"] == "qwen2.5-coder-0.5b" and a.rank == card["rank"] and a.scaling == card["alpha"] / card["rank"]
    shapes = {"q_proj": (896, 896), "k_proj": (128, 896), "v_proj": (128, 896), "o_proj": (896, 896),
              "gate_proj": (4864, 896), "up_proj": (4864, 896), "down_proj": (896, 4864)}
    assert len(a.pairs) == 24 * 7
    for module, (lo_a, lo_b) in a.pairs.items():
        out_f, in_f = shapes[module.rsplit(".", 1)[1]]
        assert lo_a.shape == (a.rank, in_f) and lo_b.shape == (out_f, a.rank), module
        assert torch.isfinite(lo_a).all() and torch.isfinite(lo_b).all() and lo_b.abs().max() > 0, module
