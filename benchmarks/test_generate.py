"""Decode throughput of the engine against transformers on the same GGUF, same process (CPU).

python -m pytest benchmarks/test_generate.py -s   (loads the 0.5B demo model twice; minutes)
"""
import time

import pytest
import torch

from engine.engine import Engine
from engine.sampling import SamplingParams

NEW = 32
PROMPT = "Write a Python function that checks whether a number is prime.\n"


@pytest.fixture(scope="module")
def pair():
    from engine.models import registry
    if not registry.is_installed("qwen2.5-coder-0.5b"):
        pytest.skip("demo model not installed")
    transformers = pytest.importorskip("transformers")
    path = registry.model_path("qwen2.5-coder-0.5b")
    eng = Engine.from_pretrained("qwen2.5-coder-0.5b", dtype="bfloat16", kv_memory_bytes=1 << 30)
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.bfloat16).eval()
    return eng, hf


@pytest.mark.parametrize("batch", [1, 8])
@pytest.mark.parametrize("impl", ["gboost", "transformers"])
def test_decode_throughput(benchmark, pair, impl, batch):
    eng, hf = pair
    ids = eng.role("slm").tokenizer.encode(PROMPT)
    prompts = [ids + [i] for i in range(batch)]          # distinct sequences, equal lengths
    if impl == "gboost":
        def run():
            eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=NEW, ignore_eos=True))
    else:
        def run():
            with torch.no_grad():
                hf.generate(torch.tensor(prompts), max_new_tokens=NEW, min_new_tokens=NEW, do_sample=False,
                            pad_token_id=0)
    run()  # warm-up
    benchmark.pedantic(run, rounds=3, iterations=1)
    tps = batch * NEW / benchmark.stats.stats.median
    benchmark.extra_info.update({"tokens_per_s": round(tps, 2), "batch": batch})
    print(f"\n[decode] {impl} batch {batch}: {tps:.1f} tok/s")
