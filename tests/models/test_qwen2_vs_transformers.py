"""Our Qwen2/Llama decoder on the paged cache against transformers, on tiny random checkpoints."""
import pytest
import torch

from gboost.engine import Engine, ResidentModel
from gboost.kv.cache import KVPoolExhausted
from gboost.models.config import ModelConfig
from gboost.models.qwen2_llama import build_model
from gboost.sampling import SamplingParams

transformers = pytest.importorskip("transformers")

VOCAB = 1000


def tiny_hf(arch: str, seed: int = 0, **kw):
    torch.manual_seed(seed)
    common = dict(vocab_size=VOCAB, hidden_size=96, intermediate_size=160, num_hidden_layers=3,
                  num_attention_heads=6, num_key_value_heads=kw.pop("kv", 2), max_position_embeddings=512,
                  rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=kw.pop("tie", False))
    common.update(kw)
    if arch == "qwen2":
        cfg = transformers.Qwen2Config(**common)
        model = transformers.Qwen2ForCausalLM(cfg)
    else:
        cfg = transformers.LlamaConfig(**common)
        model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # biases start at zero: make them matter
        for n, p in model.named_parameters():
            if n.endswith("bias"):
                p.normal_(0, 0.5)
    return model.float().eval(), cfg


def ours(hf_model, hf_cfg, num_blocks=256, block_size=16, device="cpu"):
    cfg = ModelConfig.from_hf_dict(hf_cfg.to_dict())
    m = build_model(cfg, hf_model.state_dict(), torch.float32, device)
    rm = ResidentModel("m", cfg, m, None, None, [])
    return Engine([rm], {"slm": "m"}, block_size=block_size, num_blocks=num_blocks, dtype=torch.float32, device=device)


def ref_logits(hf_model, ids):
    with torch.no_grad():
        dev = next(hf_model.parameters()).device
        return hf_model(torch.tensor([ids], device=dev)).logits[0].float()


def close(a, b):
    tol = 1e-4 * b.abs().max().item()
    assert (a - b).abs().max().item() <= tol, f"max diff {(a - b).abs().max().item()} > {tol}"


LLAMA3 = {"rope_theta": 10000.0, "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
          "high_freq_factor": 4.0, "original_max_position_embeddings": 32}
YARN = {"rope_theta": 10000.0, "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}
ARCHS = [("qwen2", {}), ("llama", {}), ("qwen2", {"tie": True, "kv": 6}), ("llama", {"kv": 1}),
         ("llama", {"rope_parameters": LLAMA3}), ("qwen2", {"rope_parameters": YARN})]


@pytest.mark.parametrize("arch,kw", ARCHS, ids=["qwen2", "llama", "qwen2-tied-mha", "llama-mqa",
                                                 "llama-rope-llama3", "qwen2-rope-yarn"])
def test_prefill_extend_decode_logits_match(arch, kw, engine_device):
    hf, cfg = tiny_hf(arch, **kw)
    hf = hf.to(engine_device)  # transformers on the same device (fp32; CUDA matmuls without TF32 by default)
    eng = ours(hf, cfg, block_size=4, device=engine_device)
    runner, cache = eng.role("slm").runner, eng.cache
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in (1, 7, 23)]
    seqs = [cache.new_sequence("m", p) for p in prompts]
    for s, p, out in zip(seqs, prompts, runner.run(seqs, "all")):        # batched prefill
        close(out, ref_logits(hf, p))
    extra = [torch.randint(0, VOCAB, (k,), generator=g).tolist() for k in (5, 1, 9)]
    for s, e in zip(seqs, extra):
        s.token_ids += e
    # extend onto cached prefix; an int want is the logits of that many last rows (all if fewer)
    for s, want, out in zip(seqs, ["all", 3, 4], runner.run(seqs, ["all", 3, 4])):
        full = ref_logits(hf, s.token_ids)
        assert out.shape[0] == {"all": 5, 3: 1, 4: 4}[want]
        close(out, full[-out.shape[0]:])
    for _ in range(4):                                                     # decode steps
        for s in seqs:
            s.token_ids.append(int(torch.randint(0, VOCAB, (1,), generator=g)))
        for s, out in zip(seqs, runner.run(seqs, "last")):
            close(out, ref_logits(hf, s.token_ids)[-1])
    for s in seqs:
        cache.free(s)
    cache.check_refcounts()


@pytest.mark.parametrize("arch", ["qwen2", "llama"])
def test_greedy_generation_is_token_identical(arch, engine_device):
    hf, cfg = tiny_hf(arch, seed=3)
    hf = hf.to(engine_device)
    eng = ours(hf, cfg, device=engine_device)
    prompts = [[1, 2, 3, 4, 5], list(range(10, 40))]
    outs = eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=32, ignore_eos=True))
    for p, o in zip(prompts, outs):
        with torch.no_grad():
            ref = hf.generate(torch.tensor([p], device=engine_device), max_new_tokens=32, do_sample=False, min_new_tokens=32,
                              pad_token_id=0)[0, len(p):].tolist()
        assert o.token_ids == ref
    assert eng.cache.blocks.num_free() == eng.cache.blocks.num_blocks


def test_forks_share_a_200_token_prefix_and_match_scratch_runs():
    hf, cfg = tiny_hf("qwen2", seed=5)
    eng = ours(hf, cfg, num_blocks=128, block_size=16)
    runner, cache = eng.role("slm").runner, eng.cache
    g = torch.Generator().manual_seed(2)
    prefix = torch.randint(0, VOCAB, (200,), generator=g).tolist()
    root = cache.new_sequence("m", prefix)
    runner.run([root], "none")
    used_by_prefix = cache.blocks.num_blocks - cache.blocks.num_free()
    assert used_by_prefix == 13  # ceil(200 / 16)
    kids = [cache.fork(root) for _ in range(8)]
    for k in kids:
        k.token_ids += torch.randint(0, VOCAB, (6,), generator=g).tolist()
    outs = runner.run(kids, "all")
    # 12 full prefix blocks held once; each branch owns only its copied tail block(s).
    held = [b for k in kids for b in k.block_table[:12]]
    assert set(held) == set(root.block_table[:12])
    assert all(cache.blocks.ref[b] == 9 for b in root.block_table[:12])
    assert cache.blocks.num_blocks - cache.blocks.num_free() == 13 + 8
    for k, out in zip(kids, outs):
        close(out, ref_logits(hf, k.token_ids)[-6:])
    for s in kids + [root]:
        cache.free(s)
    cache.check_refcounts()
    assert all(r == 0 for r in cache.blocks.ref)


def test_pool_exhaustion_fails_cleanly_and_leaks_nothing():
    hf, cfg = tiny_hf("llama", seed=7)
    eng = ours(hf, cfg, num_blocks=10, block_size=4)
    runner, cache = eng.role("slm").runner, eng.cache
    a = cache.new_sequence("m", list(range(20)))
    runner.run([a], "last")                       # 5 blocks
    b = cache.new_sequence("m", list(range(100, 124)))  # needs 6 more
    with pytest.raises(KVPoolExhausted):
        runner.run([b], "last")
    cache.check_refcounts()
    assert b.num_computed == 0 and b.block_table == []
    with pytest.raises(KVPoolExhausted):          # a generate() too big for the pool also fails cleanly
        eng.generate([list(range(50))], SamplingParams(max_tokens=4))
    cache.check_refcounts()
    cache.free(a)
    out = runner.run([b], "last")[0]              # recovers once blocks are free
    close(out, ref_logits(hf, list(range(100, 124)))[-1])
    cache.free(b)
    cache.check_refcounts()
    assert cache.blocks.num_free() == 10 and all(r == 0 for r in cache.blocks.ref)
