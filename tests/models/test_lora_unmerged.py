"""LoRA adapters unmerged on one resident base (models/lora.py), against peft's own merged models
(transformers + peft as the reference, tiny Qwen2s written on the spot, rank and alpha not 1):
base and tuned rows in one forward, several adapters in one batch, prefixes never shared across
adapters, proxy tuning from one copy equal to three separately loaded models, and a bad adapter
that changes nothing."""
import asyncio
import shutil

import pytest
import torch

from gboost.engine import Engine
from gboost.models.adapter import AdapterError, read_adapter
from gboost.models.lora import LoraLinear, adapters_of

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from model_fixtures import make_tiny_hf, make_tiny_tokenizer, save_tiny_hf  # noqa: E402

# X leaves k_proj and up_proj out, so a fused qkv / gate_up layer has parts with and without LoRA
TARGETS = {"x": ["q_proj", "v_proj", "o_proj", "gate_proj", "down_proj"],
           "y": ["k_proj", "up_proj", "o_proj"]}
IDS = [5, 17, 3, 99, 41, 8, 250, 7, 12, 30, 31, 32, 33, 34, 35, 36, 37, 38, 40]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    d = tmp_path_factory.mktemp("lora2")
    tok = make_tiny_tokenizer()
    base_dir = save_tiny_hf(d / "base", make_tiny_hf("qwen2", seed=3), tok)
    adapters, merged = {}, {}
    for i, (name, targets) in enumerate(TARGETS.items()):
        cfg = peft.LoraConfig(r=3 + i, lora_alpha=7 + 4 * i, target_modules=targets, init_lora_weights=False,
                              lora_dropout=0.0)
        torch.manual_seed(10 + i)
        tuned = peft.get_peft_model(make_tiny_hf("qwen2", seed=3), cfg)
        tuned.save_pretrained(str(d / name), safe_serialization=True)
        merged[name] = tuned.merge_and_unload().eval()
    return base_dir, {n: d / n for n in TARGETS}, make_tiny_hf("qwen2", seed=3).eval(), merged, tok, d


def _ref(model, ids):
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float()


def _tol(ref):
    return 1e-4 * ref.abs().max().item()  # fp32 sums in another order: relative 1e-4 of the largest logit


def _run(eng, views, ids_each):
    """One forward of one sequence per view (a role's ResidentModel), all in the same batch."""
    seqs = [v.new_sequence(eng.cache, ids) for v, ids in zip(views, ids_each)]
    outs = views[0].runner.run(seqs, "all")
    for s in seqs:
        eng.cache.free(s)
    return [o.float() for o in outs]


def test_base_and_tuned_rows_in_one_forward_equal_peft(pair):
    base_dir, adapters, base, merged, _, _ = pair
    eng = Engine.from_pretrained(str(base_dir), base=str(base_dir), slm_adapter=str(adapters["x"]),
                                 dtype="float32", num_blocks=64)
    slm, bas = eng.role("slm"), eng.role("base")
    assert slm.model is bas.model and len(eng.models) == 1   # one resident copy of the weights
    assert slm.adapter == str(adapters["x"]) and bas.adapter is None
    tuned, untuned = _run(eng, [slm, bas], [IDS, IDS[:11]])
    ref_t, ref_b = _ref(merged["x"], IDS), _ref(base, IDS[:11])
    assert (ref_t[:11] - ref_b).abs().max() > 100 * _tol(ref_t)   # the adapter changes the logits
    assert (tuned - ref_t).abs().max() <= _tol(ref_t)
    assert (untuned - ref_b).abs().max() <= _tol(ref_b)
    eng.cache.check_refcounts()


def test_several_adapters_in_one_batch_give_each_row_its_own(pair):
    base_dir, adapters, base, merged, _, _ = pair
    eng = Engine.from_pretrained(str(base_dir), dtype="float32", num_blocks=64)
    for name, path in adapters.items():
        eng.add_adapter(name, str(path), model=eng.roles["slm"])
    assert adapters_of(eng.role("slm").model) == {"x", "y"}
    views = [eng.role("slm", adapter="y"), eng.role("slm"), eng.role("slm", adapter="x"), eng.role("slm", adapter="y")]
    ids = [IDS, IDS[2:9], IDS[1:], IDS[:5]]
    outs = _run(eng, views, ids)
    for v, i, out in zip(views, ids, outs):
        ref = _ref(merged[v.adapter] if v.adapter else base, i)
        assert (out - ref).abs().max() <= _tol(ref), v.adapter


def test_the_unmerged_path_equals_the_merged_one_in_bf16_within_rounding(pair):
    # bf16 on CPU packs and fuses the linears (qkv_proj, gate_up_proj): the LoRA parts are found in them
    base_dir, adapters, _, merged, _, _ = pair
    merged_eng = Engine.from_pretrained(str(base_dir), slm_adapter=str(adapters["x"]), adapter_mode="merge",
                                        dtype="bfloat16", num_blocks=64)
    eng = Engine.from_pretrained(str(base_dir), slm_adapter=str(adapters["x"]), adapter_mode="unmerged",
                                 dtype="bfloat16", num_blocks=64)
    assert any(isinstance(m, LoraLinear) for m in eng.role("slm").model.modules())
    ref = _ref(merged["x"], IDS)
    err_merged = (_run(merged_eng, [merged_eng.role("slm")], [IDS])[0] - ref).abs().max().item()
    err = (_run(eng, [eng.role("slm")], [IDS])[0] - ref).abs().max().item()
    # both round the same fp32 function to bf16 at every layer (8 bits of mantissa); the unmerged
    # one adds its fp32 delta to a rounded output instead of rounding W + delta: errors alike
    assert err <= 2 * err_merged + 1e-3 * ref.abs().max().item()


def test_prefixes_are_shared_within_an_adapter_never_across(pair):
    base_dir, adapters, *_ = pair
    eng = Engine.from_pretrained(str(base_dir), base=str(base_dir), slm_adapter=str(adapters["x"]),
                                 dtype="float32", num_blocks=64, block_size=4)
    slm, bas = eng.role("slm"), eng.role("base")
    first = slm.new_sequence(eng.cache, IDS)
    slm.runner.run([first], "last")
    again, other = slm.new_sequence(eng.cache, IDS), bas.new_sequence(eng.cache, IDS)
    assert again.cached_tokens == 16 and other.cached_tokens == 0
    assert eng.cache.cached_prefix_len(bas.key, IDS) == 0
    assert eng.cache.cached_prefix_len(slm.key, IDS, slm.adapter) == 16
    child = eng.cache.fork(again)
    assert child.adapter == slm.adapter
    for s in (first, again, other, child):
        eng.cache.free(s)
    eng.cache.check_refcounts()


def test_proxy_tuning_from_one_copy_equals_three_loaded_models(pair, tmp_path):
    # the paper's Proxy-Tuning: llm + alpha * (tuned - base); greedy fp32 steps must be the same
    from gboost.collab.executor import CollabOptions
    from gboost.search.config import SearchConfig
    from gboost.stack import build_stack
    base_dir, adapters, _, _, tok, d = pair
    llm_dir = save_tiny_hf(tmp_path / "llm", make_tiny_hf("qwen2", seed=8, num_hidden_layers=3), tok)
    base_copy = tmp_path / "base_copy"
    shutil.copytree(base_dir, base_copy)
    cfg = SearchConfig(method="fusion", fusion_rule="proxy", fusion_alpha=0.7, temperature=0.0, top_p=1.0,
                       max_step_tokens=6, max_depth=2, score_baselines=False)

    async def steps(**kw):
        stack = await build_stack(cfg, slm=str(base_dir), llm=str(llm_dir), prm="none", slm_adapter=str(adapters["x"]),
                                  dtype="float32", kv_memory_gb=0.02, options=CollabOptions(collab_mode="exact"), **kw)
        try:
            root = await stack.executor.root("What is 2 + 3?")
            kid = (await stack.executor.expand(root, "collab", 1))[0]
            out = (kid.token_ids, len(stack.engine.models), stack.executor.cost.base_tokens)
            stack.executor.release(kid.state)
            stack.executor.release(root)
            return out
        finally:
            stack.scheduler.close()
    one = asyncio.run(steps(base=str(base_dir)))               # base == SLM checkpoint: unmerged, one copy
    three = asyncio.run(steps(base=str(base_copy)))            # another path: three loaded models, merged SLM
    assert one[1] == 2 and three[1] == 3
    assert one[0] == three[0] and len(one[0]) > 0 and one[2] > 0


def test_a_bad_adapter_changes_nothing(pair, tmp_path):
    base_dir, adapters, base, _, tok, _ = pair
    eng = Engine.from_pretrained(str(base_dir), dtype="float32", num_blocks=64)
    other = tmp_path / "other"
    small = make_tiny_hf("qwen2", seed=5, hidden_size=32, intermediate_size=64)
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False)
    peft.get_peft_model(small, cfg).save_pretrained(str(other), safe_serialization=True)
    with pytest.raises(AdapterError, match="another base model") as e:
        eng.add_adapter("bad", str(other), role="slm")
    assert str(other) in str(e.value) and "\n" not in str(e.value)
    eng.add_adapter("x", str(adapters["x"]), model=eng.roles["slm"])
    with pytest.raises(AdapterError, match="already loaded"):
        eng.add_adapter("x", str(adapters["y"]), model=eng.roles["slm"])
    assert adapters_of(eng.role("slm").model) == {"x"} and "slm" not in eng.role_adapters
    with pytest.raises(KeyError, match="no LoRA adapter 'nope'"):
        eng.role("slm", adapter="nope")
    ref = _ref(base, IDS)
    assert (_run(eng, [eng.role("slm")], [IDS])[0] - ref).abs().max() <= _tol(ref)   # base rows untouched
    seq = eng.cache.new_sequence(eng.roles["slm"], IDS, adapter="nope")
    with pytest.raises(ValueError, match="holds no LoRA adapter 'nope'"):
        eng.role("slm").runner.run([seq], "last")
    eng.cache.free(seq)
    eng.cache.check_refcounts()


def test_lm_head_lora_is_refused_unmerged(pair, tmp_path):
    base_dir, *_ = pair
    d = tmp_path / "head"
    cfg = peft.LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "lm_head"], init_lora_weights=False)
    peft.get_peft_model(make_tiny_hf("qwen2", seed=3), cfg).save_pretrained(str(d), safe_serialization=True,
                                                                      save_embedding_layers=False)
    eng = Engine.from_pretrained(str(base_dir), dtype="float32", num_blocks=16)
    with pytest.raises(AdapterError, match="merged at load only"):
        eng.add_adapter("h", read_adapter(d), role="slm")
    assert not any(isinstance(m, LoraLinear) for m in eng.role("slm").model.modules())


def test_a_tuned_role_has_the_merged_models_fingerprint(pair):
    # value heads check the model they read by fingerprint: a head fit on the base SLM must not pass
    # for the tuned one, and one fit on the merged SLM must pass for the unmerged one
    from gboost.prm.value_head import model_fingerprint
    base_dir, adapters, *_ = pair
    merged = Engine.from_pretrained(str(base_dir), slm_adapter=str(adapters["x"]), adapter_mode="merge",
                                    dtype="float32", num_blocks=16).role("slm")
    one = Engine.from_pretrained(str(base_dir), base=str(base_dir), slm_adapter=str(adapters["x"]),
                                 dtype="float32", num_blocks=16)
    tuned, base = one.role("slm"), one.role("base")
    assert model_fingerprint(tuned.model, tuned.adapter) == model_fingerprint(merged.model)
    assert model_fingerprint(base.model, base.adapter) != model_fingerprint(merged.model)
