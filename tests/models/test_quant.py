"""Weight-only int4/int8 linears (models/quant.py): the GGUF 4-bit layouts against gguf's own
dequantizer, the requantization bounds, the packed products against float64, and a quantized
engine against transformers running the same dequantized weights (tiny models written here)."""
import numpy as np
import pytest
import torch
from torch import nn

from gboost.models.quant import (GROUP, Int4Codes, Int4Linear, Int8Linear, gguf_int4, quantize_int4,
                                 quantize_int8, quantize_linears, weight_format)

gguf = pytest.importorskip("gguf")
from model_fixtures import make_tiny_hf, make_tiny_tokenizer, save_tiny_hf, write_gguf  # noqa: E402

EPS = {torch.float32: 2.0 ** -23, torch.bfloat16: 2.0 ** -8}
BLOCK = {"Q4_K": (256, 144, 4), "Q4_0": (32, 18, 2), "Q4_1": (32, 20, 4)}  # columns, bytes, f16 bytes


def _random_blocks(qtype: str, n: int, k: int, seed: int) -> np.ndarray:
    """Any bytes are a valid block once its f16 scales are finite: random codes, scales and mins."""
    cols, width, f16 = BLOCK[qtype]
    rng = np.random.default_rng(seed)
    b = rng.integers(0, 256, (n * k // cols, width), dtype=np.uint8)
    b[:, :f16] = rng.normal(0, 0.02, (b.shape[0], f16 // 2)).astype(np.float16).view(np.uint8)
    return b


@pytest.mark.parametrize("qtype", sorted(BLOCK))
@pytest.mark.parametrize("n,k", [(3, 256), (17, 512)])
def test_gguf_4bit_types_map_onto_int4_exactly(qtype, n, k):
    blocks = _random_blocks(qtype, n, k, seed=n + k)
    ref = gguf.quants.dequantize(blocks.reshape(n, -1), gguf.GGMLQuantizationType[qtype]).reshape(n, k)
    codes = gguf_int4(qtype, blocks, n, k)
    assert codes.codes.dtype == torch.uint8 and int(codes.codes.max()) <= 15
    # torch's layout stores zero = offset + 8 scale: exact up to fp32 rounding of that sum
    s = codes.scale.repeat_interleave(GROUP, 1).numpy()
    assert (np.abs(codes.dequantize().numpy() - ref) <= 2.0 ** -21 * (np.abs(ref) + 16 * np.abs(s))).all()
    assert np.array_equal(codes.codes.numpy(), _codes_of(ref, codes))  # and the codes are the file's


def _codes_of(ref, codes):
    """The codes that reproduce ``ref`` on the given grid (round to the nearest level)."""
    s = codes.scale.repeat_interleave(GROUP, 1).numpy()
    z = codes.zero.repeat_interleave(GROUP, 1).numpy()
    safe = np.where(s == 0, 1, s)
    return np.where(s == 0, codes.codes.numpy(), np.clip(np.rint((ref - z) / safe + 8), 0, 15)).astype(np.uint8)


def test_other_gguf_types_are_not_taken_as_int4():
    assert gguf_int4("Q8_0", np.zeros((2, 34), np.uint8), 2, 32) is None


@pytest.mark.parametrize("n,k", [(17, 96), (1, 32), (40, 64)])
def test_requantization_bounds(n, k):
    torch.manual_seed(n)
    w = torch.randn(n, k) * torch.rand(n, 1) * 3
    w[0, :GROUP] = 0.7  # a constant group: scale 0 must not divide by zero
    c4 = quantize_int4(w)
    err4 = (c4.dequantize() - w).abs().view(n, k // GROUP, GROUP).amax(-1)
    assert (err4 <= c4.scale / 2 + 1e-6 * w.abs().max()).all()
    assert torch.equal(c4.dequantize()[0, :GROUP], w[0, :GROUP])
    q8, s8 = quantize_int8(w)
    assert ((q8.float() * s8[:, None] - w).abs() <= s8[:, None] / 2 + 1e-6).all()


def _bound(x, w, dtype):
    """What the packed op may differ from float64 by: its output (and the weights it dequantizes)
    rounded to ``dtype``, fp32 sums: 3 eps |x| |W|^T, plus an absolute floor for fp32 sums."""
    return 3 * EPS[dtype] * (x.abs().double() @ w.abs().double().T) + 1e-6


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,n,k", [(1, 40, 64), (5, 17, 96), (9, 48, 32)])
def test_int4_and_int8_products_against_float64(dtype, rows, n, k):
    torch.manual_seed(rows * n)
    lin = nn.Linear(k, n, bias=True)
    parts = [lin.to(dtype)]
    x = torch.randn(2, rows, k).to(dtype)
    for layer in (Int4Linear(parts, dtype=dtype), Int8Linear(parts, dtype=dtype)):
        y = layer(x)
        assert y.shape == (2, rows, n) and y.dtype == dtype
        w = layer.weight.double()
        ref = x.double() @ w.T + lin.bias.double()
        assert ((y.double() - ref).abs() <= _bound(x, w, dtype) + EPS[dtype] * lin.bias.abs().double()).all()
        # the dequantized weight is within the format's bound of the original
        step = (w - lin.weight.double()).abs().max()
        assert 0 < step <= (lin.weight.double().abs().max() / (7 if layer.format == "int4" else 127))


def test_fallback_product_equals_packed(monkeypatch):
    torch.manual_seed(1)
    lin = nn.Linear(64, 48, bias=False)
    fast = Int4Linear([lin], dtype=torch.float32)
    x = torch.randn(3, 64)
    y, w = fast(x), fast.weight
    monkeypatch.delattr(torch, "_weight_int4pack_mm_for_cpu")
    slow = Int4Linear([lin], dtype=torch.float32)
    assert slow.packed is None and fast.packed is not None
    assert torch.allclose(y, slow(x), rtol=1e-5, atol=1e-6)
    assert torch.allclose(w, slow.weight, rtol=0, atol=1e-6)


def test_exact_codes_are_taken_as_they_are():
    torch.manual_seed(2)
    a, b = nn.Linear(64, 32, bias=False), nn.Linear(64, 16, bias=False)
    given = quantize_int4(torch.randn(32, 64))
    layer = Int4Linear([a, b], exact=[given, None], dtype=torch.float32)
    assert layer.exact_parts == 1 and layer.parts_out == [32, 16]
    assert torch.allclose(layer.weight[:32], given.dequantize(), rtol=0, atol=1e-6)
    assert (layer.weight[32:] - b.weight).abs().max() <= quantize_int4(b.weight).scale.max() / 2 + 1e-6


# -- whole models ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_hf(tmp_path_factory.mktemp("quant") / "m", make_tiny_hf("qwen2", seed=5), make_tiny_tokenizer())


def _hf_with(weights_of, hf):
    """The transformers model with each linear's weight replaced by the engine layer's dequantized one."""
    sd = hf.state_dict()
    for name, w in weights_of.items():
        sd[name] = w.float()
    hf.load_state_dict(sd)
    return hf


def _dense_weights(model) -> dict[str, torch.Tensor]:
    """HF-named dense weights of an engine model's quantized (maybe fused) linears."""
    out = {}
    for prefix, mod in model.named_modules():
        if getattr(mod, "format", "") in ("int4", "int8"):
            parent, _, attr = prefix.rpartition(".")
            names = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}.get(attr, (attr,))
            for name, w in zip(names, mod.weight.split(mod.parts_out)):
                out[f"{parent}.{name}.weight".lstrip(".")] = w
    return out


@pytest.mark.parametrize("fmt", ["int4", "int8"])
def test_quantized_engine_matches_transformers_on_its_weights(tiny_dir, fmt):
    from gboost.engine import Engine
    from gboost.sampling import SamplingParams
    eng = Engine.from_pretrained(str(tiny_dir), dtype="float32", weights=fmt, num_blocks=64)
    m = eng.role("slm")
    assert eng.weight_formats == {str(tiny_dir): fmt} and weight_format(m.model) == fmt
    dense = _dense_weights(m.model)
    assert len(dense) == 2 * 7 + 1  # every projection of both layers, and the lm_head
    hf = _hf_with(dense, make_tiny_hf("qwen2", seed=5))
    ids = [5, 17, 3, 99, 41, 8, 250, 7, 12, 30]
    seq = m.new_sequence(eng.cache, ids)
    got = m.runner.run([seq], "all")[0].float()
    eng.cache.free(seq)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()
    out = eng.generate([ids], SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True))[0].token_ids
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False, min_new_tokens=12)[0, len(ids):]
    assert out == want.tolist()


def test_value_head_fingerprint_names_the_checkpoint_not_its_format(tiny_dir):
    from gboost.engine import Engine
    from gboost.prm.value_head import model_fingerprint
    fps = {fmt: model_fingerprint(Engine.from_pretrained(str(tiny_dir), dtype="bfloat16", weights=fmt,
                                                         num_blocks=8).role("slm").model)
           for fmt in ("bf16", "int4", "int8")}
    assert len(set(fps.values())) == 1


def test_gguf_4bit_tensors_load_exactly(tmp_path):
    from gboost.engine import Engine
    from gboost.models.loader import load_checkpoint
    quant = {"model.layers.0.mlp.down_proj.weight": "Q4_0", "model.layers.1.self_attn.q_proj.weight": "Q4_1",
             "model.layers.1.mlp.up_proj.weight": "Q8_0"}
    path = write_gguf(tmp_path / "t.gguf", make_tiny_hf("qwen2", seed=7), make_tiny_tokenizer(), quant=quant)
    file_w = load_checkpoint(path, dtype=torch.float32).state_dict  # the file's values, dequantized
    eng = Engine.from_pretrained(str(path), dtype="float32", weights="int4", num_blocks=8)
    dense = _dense_weights(eng.role("slm").model)
    for name in ("model.layers.0.mlp.down_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert torch.equal(dense[name], file_w[name]), name  # 4-bit in the file: exact
    w = file_w["model.layers.1.mlp.up_proj.weight"]  # Q8_0 in the file: requantized, within its bound
    assert (dense["model.layers.1.mlp.up_proj.weight"] - w).abs().max() <= quantize_int4(w).scale.max() / 2 + 1e-6


def test_lora_on_a_quantized_base(tiny_dir, tmp_path):
    peft = pytest.importorskip("peft")
    from gboost.engine import Engine
    cfg = peft.LoraConfig(r=3, lora_alpha=5, target_modules=["q_proj", "down_proj"], init_lora_weights=False)
    torch.manual_seed(4)
    peft.get_peft_model(make_tiny_hf("qwen2", seed=5), cfg).save_pretrained(str(tmp_path / "a"), safe_serialization=True)
    eng = Engine.from_pretrained(str(tiny_dir), dtype="float32", weights="int4", num_blocks=64)
    dense = _dense_weights(eng.role("slm").model)
    eng.add_adapter("a", str(tmp_path / "a"), role="slm")
    m = eng.role("slm")
    hf = peft.PeftModel.from_pretrained(_hf_with(dense, make_tiny_hf("qwen2", seed=5)), str(tmp_path / "a"))
    ids = [9, 8, 7, 60, 61, 62]
    seq = m.new_sequence(eng.cache, ids)
    got = m.runner.run([seq], "all")[0].float()
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].float()
    assert (got - ref).abs().max() <= 1e-4 * ref.abs().max()


def test_unknown_format_is_refused():
    from gboost.engine import Engine
    with pytest.raises(ValueError, match="weights='int3': choose one of bf16, int8, int4"):
        Engine.from_pretrained("nowhere", weights="int3")
    with pytest.raises(ValueError, match="choose one of"):
        quantize_linears(nn.Linear(4, 4), "fp8")
