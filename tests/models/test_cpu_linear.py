"""CPU linears for bf16 weights (engine/models/cpu_linear.py): the oneDNN-prepacked and the
upcast-per-call products against an fp64 reference within bf16's rounding bound, the fused layouts,
and a converted model no further from exact arithmetic than the plain bf16 one. The packed tests are
skipped where this CPU's oneDNN has no bf16 kernels (AVX2-only); UpcastLinear, which such CPUs use,
is built directly (or chosen by pretending packing is impossible) and so is tested on every CPU."""
import copy

import pytest
import torch
from torch import nn

from gboost.models import cpu_linear
from gboost.models.cpu_linear import PackedLinear, UpcastLinear, can_pack, pack_linears
from gboost.testing import tiny_config, tiny_model

U32, U16 = 2.0 ** -24, 2.0 ** -8  # unit roundoff of fp32 and of bf16 (8 significant bits)
packs = pytest.mark.skipif(not can_pack(torch.empty(1, 1, dtype=torch.bfloat16)),
                           reason="this CPU's oneDNN has no bf16 kernels: the plain path runs")


def _linear(n_in, n_out, bias, seed):
    g = torch.Generator().manual_seed(seed)
    lin = nn.Linear(n_in, n_out, bias=bias).to(torch.bfloat16)
    with torch.no_grad():
        lin.weight.copy_(torch.randn(n_out, n_in, generator=g) * n_in ** -0.5)
        if bias:
            lin.bias.copy_(torch.randn(n_out, generator=g))
    return lin


def _assert_within_linear_bound(y, x, parts):
    """bf16 x bf16 products are exact in fp32; a K-term fp32 sum in any order errs by at most
    (K-1) u32 sum|w x|; adding the bias and rounding to bf16 adds u16 |y| (first order)."""
    W = torch.cat([p.weight for p in parts]).double()
    b = [p.bias.double() if p.bias is not None else torch.zeros(p.out_features, dtype=torch.float64) for p in parts]
    ref = x.double() @ W.T + torch.cat(b)
    K = x.shape[-1]
    bound = (K - 1) * U32 * (x.double().abs() @ W.abs().T) * (1 + U16) + U16 * ref.abs() * (1 + 1e-3) + 1e-30
    err = (y.double() - ref).abs()
    assert (err <= bound).all(), f"max excess {(err - bound).max().item():.3g}"


def _no_packing(monkeypatch):
    """Make pack_linears choose UpcastLinear, as it does on an AVX2-only CPU."""
    monkeypatch.setattr(cpu_linear, "can_pack", lambda weight: False)


SHAPES = [([(67, 37)], True), ([(96, 131)], False), ([(67, 40), (67, 9), (67, 9)], True), ([(45, 70), (45, 70)], False)]


@pytest.mark.parametrize("M", [1, 3, 17, 40])
@pytest.mark.parametrize("shapes,bias", SHAPES)
@pytest.mark.parametrize("kind", [pytest.param(PackedLinear, marks=packs), UpcastLinear])
def test_product_within_bf16_bound(kind, M, shapes, bias):
    parts = [_linear(k, n, bias and i != 1, seed=i) for i, (k, n) in enumerate(shapes)]  # one part without bias
    packed = kind(parts)
    assert packed.out_features == sum(n for _, n in shapes)
    x = torch.randn(M, shapes[0][0], generator=torch.Generator().manual_seed(M)).to(torch.bfloat16)
    y = packed(x)
    assert y.dtype == torch.bfloat16 and y.shape == (M, packed.out_features)
    _assert_within_linear_bound(y, x, parts)
    assert torch.equal(packed(x[None]), y[None])  # leading dims pass through


@pytest.mark.parametrize("scratch", [1, 67 * 5, 67 * 48])
@pytest.mark.parametrize("shapes,bias", SHAPES[2:3] + SHAPES[:1])
def test_upcast_product_in_row_chunks(monkeypatch, scratch, shapes, bias):
    """Weights larger than the scratch are upcast in chunks of output rows (one row, a few rows,
    chunks that do not divide the rows); the result must be the unchunked one within the bound."""
    monkeypatch.setattr(cpu_linear, "SCRATCH_ELEMS", scratch)
    parts = [_linear(k, n, bias and i != 1, seed=10 + i) for i, (k, n) in enumerate(shapes)]
    up = UpcastLinear(parts)
    x = torch.randn(2, 19, shapes[0][0], generator=torch.Generator().manual_seed(7)).to(torch.bfloat16)
    y = torch.full((2, 19, up.out_features), float("nan"), dtype=torch.bfloat16)
    y.copy_(up(x))  # shape and dtype must fit a poisoned output
    assert not y.isnan().any()
    _assert_within_linear_bound(y, x, parts)


def test_upcast_keeps_few_rows_on_the_plain_path():
    """Below UPCAST_MIN_ROWS rows (decode) the plain bf16 F.linear runs, bit for bit: it reads half
    the bytes of an upcast weight."""
    import torch.nn.functional as F
    lin = _linear(67, 37, True, seed=4)
    up = UpcastLinear([lin])
    assert up.weight.data_ptr() == lin.weight.data_ptr()  # one part: the weight is shared, not copied
    x = torch.randn(cpu_linear.UPCAST_MIN_ROWS - 1, 67, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    assert torch.equal(up(x), F.linear(x, lin.weight, lin.bias))


@pytest.mark.parametrize("kind", [pytest.param(PackedLinear, marks=packs), UpcastLinear])
def test_pack_linears_fuses_in_order_and_keeps_the_weights(monkeypatch, kind):
    if kind is UpcastLinear:
        _no_packing(monkeypatch)
    model = tiny_model(tiny_config(attention_bias=True), seed=3, dtype=torch.bfloat16)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    q, k, v, g, u = (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj)
    lm_head = model.lm_head.weight.clone()
    n = pack_linears(model)
    assert n == 4 * len(model.model.layers) + 1  # qkv, o, gate_up, down per layer, and the lm_head
    assert type(attn.qkv_proj) is kind and type(model.lm_head) is kind and type(attn.o_proj) is kind
    assert not hasattr(attn, "q_proj") and not hasattr(mlp, "up_proj")
    assert torch.equal(attn.qkv_proj.weight, torch.cat([q.weight, k.weight, v.weight]))
    assert torch.equal(attn.qkv_proj.bias, torch.cat([q.bias, k.bias, v.bias]))
    assert torch.equal(mlp.gate_up_proj.weight, torch.cat([g.weight, u.weight]))
    assert torch.equal(model.lm_head.weight, lm_head) and model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert pack_linears(model) == n  # packing twice changes nothing


@pytest.mark.parametrize("packing", [True, False])
def test_fallback_keeps_plain_linears(monkeypatch, packing):
    if not packing:
        _no_packing(monkeypatch)
    for model in (tiny_model(tiny_config(), seed=1), tiny_model(tiny_config(), seed=1, dtype=torch.bfloat16)):
        if model.lm_head.weight.dtype == torch.bfloat16:
            monkeypatch.setenv(cpu_linear.ENV, "0")  # the switch turns both kinds off for bf16
        assert pack_linears(model) == 0  # fp32: never converted
        assert type(model.lm_head) is nn.Linear and hasattr(model.model.layers[0].self_attn, "q_proj")


@pytest.mark.parametrize("kind", [pytest.param(PackedLinear, marks=packs), UpcastLinear])
def test_packed_model_is_as_close_to_exact_as_the_plain_one(monkeypatch, kind):
    """Packing or upcasting changes only the order of fp32 accumulations, so the converted bf16
    model must sit as close to exact (fp64) arithmetic on the same weights as the plain bf16 model
    does; a mis-fused layout (q and k swapped, gate and up) would put it orders of magnitude further.
    The 17-token prefill takes the upcast product, the 4-token extend the plain one."""
    from gboost.engine import Engine, ResidentModel
    if kind is UpcastLinear:
        _no_packing(monkeypatch)
    cfg = tiny_config(attention_bias=True, layers=3)
    plain = tiny_model(cfg, seed=5, dtype=torch.bfloat16)
    exact = copy.deepcopy(plain).double()
    packed = copy.deepcopy(plain)
    ids = torch.tensor([(31 * i) % 250 + 3 for i in range(21)])
    outs = {}
    for name, model, dt in (("plain", plain, torch.bfloat16), ("packed", packed, torch.bfloat16),
                            ("exact", exact, torch.float64)):
        monkeypatch.setenv(cpu_linear.ENV, "0" if name == "plain" else "1")
        eng = Engine([ResidentModel(name, cfg, model, None, None, [])], {"slm": name}, num_blocks=16, dtype=dt)
        assert (type(model.lm_head) is kind) == (name == "packed")
        s = eng.cache.new_sequence(name, ids[:17].tolist())
        prefill = model_runner_all(eng, name, s)
        eng.cache.append(s, ids[17:].tolist())
        outs[name] = torch.cat([prefill, model_runner_all(eng, name, s)]).double()  # prefill, then a 4-token extend
    err_plain = (outs["plain"] - outs["exact"]).abs().max()
    err_packed = (outs["packed"] - outs["exact"]).abs().max()
    assert err_packed <= 2 * err_plain + 1e-3 * outs["exact"].abs().max(), (err_packed, err_plain)


def model_runner_all(eng, name, seq):
    return eng.models[name].runner.run([seq], "all")[0]
