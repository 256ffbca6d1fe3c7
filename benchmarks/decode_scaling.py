"""Decode-step time against batch size for one demo model (CPU sizing of the GSM8K runs).

    python benchmarks/decode_scaling.py qwen2.5-coder-1.5b

A step's time is (time for 20 new tokens - time for 4) / 16 on a 240-token prompt, so the
prompt's prefill cancels out; batch b means b distinct sequences decoded together.
"""
import sys
import time

from gboost.engine import Engine
from gboost.sampling import SamplingParams


def main(name: str) -> None:
    eng = Engine.from_pretrained(name, dtype="bfloat16", kv_memory_bytes=2 << 30)
    ids = eng.role("slm").tokenizer.encode("Write a Python function that checks whether a number is prime.\n" * 20)
    for b in (1, 8, 32):
        prompts = [ids + [i] for i in range(b)]
        times = {}
        for n in (4, 4, 20):  # the first run fills the prefix cache
            t = time.perf_counter()
            eng.generate(prompts, SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True))
            times[n] = time.perf_counter() - t
        step = (times[20] - times[4]) / 16
        print(f"{name} batch {b}: decode step {step * 1000:.0f} ms -> {b / step:.1f} tok/s")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "qwen2.5-coder-0.5b")
