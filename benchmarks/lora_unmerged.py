"""Proxy tuning's two SLM rows per token (tuned and base), from two resident copies (the adapter
merged into one) or from one copy with the adapter unmerged (models/lora.py): resident weight
bytes, and decode time per token, in one process on the same prompt.

    python benchmarks/lora_unmerged.py --slm qwen2.5-coder-0.5b --rank 16 --tokens 48

Per layout it times (a) the proxy step: the tuned and the base row of one token (two forwards
with two copies, one forward of two rows with one), and (b) the tuned SLM alone (one row), the
cost the unmerged delta adds to a plain decode. The adapter is random (rank r on every linear
of every layer, as peft's target_modules="all-linear" saves it); only its shapes matter here.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from gboost.engine import Engine

TARGETS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def write_adapter(d: Path, cfg, rank: int, seed: int = 0) -> Path:
    from safetensors.torch import save_file

    from gboost.testing import random_adapter
    ad = random_adapter(cfg, seed, rank=rank, alpha=2.0 * rank, targets=TARGETS)
    t = {}
    for module, (a, b) in ad.pairs.items():
        t[f"base_model.model.{module}.lora_A.weight"] = a.to(torch.bfloat16) * 0.01
        t[f"base_model.model.{module}.lora_B.weight"] = b.to(torch.bfloat16) * 0.01
    d.mkdir(parents=True, exist_ok=True)
    save_file(t, str(d / "adapter_model.safetensors"))
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank,
                                                       "target_modules": [x.split(".")[-1] for x in TARGETS]}))
    return d


def resident_bytes(eng: Engine) -> int:
    """Weights of the resident models (packed layers counted by their dense size), LoRA tensors included."""
    from gboost.models.lora import LoraLinear
    n = 0
    for m in eng.models.values():
        for mod in m.model.modules():
            for p in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)):
                n += p.numel() * p.element_size()
            if hasattr(mod, "packed"):
                n += mod.out_features * mod.in_features * 2
            if isinstance(mod, LoraLinear):
                n += sum(t.numel() * t.element_size() for pair in mod.adapters.values() for t in pair)
    return n


def decode(eng: Engine, roles: list[str], prompt: list[int], tokens: int) -> float:
    """Seconds per token of greedy decoding where each token computes one row per role (a role
    sharing a runner with another shares its forward)."""
    views = [eng.role(r) for r in roles]
    seqs = [v.new_sequence(eng.cache, list(prompt)) for v in views]
    by_runner: dict[int, list] = {}
    for v, s in zip(views, seqs):
        by_runner.setdefault(id(v.runner), [v.runner, []])[1].append(s)
    try:
        for runner, ss in by_runner.values():   # the prompt, untimed
            runner.run(ss, "last")
        t0 = time.perf_counter()
        for _ in range(tokens):
            rows = [row for runner, ss in by_runner.values() for row in runner.run(ss, "last")]
            t = int(rows[0].argmax())
            for s in seqs:
                eng.cache.append(s, [t])
        return (time.perf_counter() - t0) / tokens
    finally:
        for s in seqs:
            eng.cache.free(s)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slm", default="qwen2.5-coder-0.5b")
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", default="bfloat16")
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        probe = Engine.from_pretrained(args.slm, dtype=args.dtype, num_blocks=64)
        cfg, tok = probe.role("slm").config, probe.role("slm").tokenizer
        del probe
        ad = write_adapter(Path(tmp) / "adapter", cfg, args.rank)
        prompt = tok.encode_prompt("Natalia sold clips to 48 of her friends in April, and then she sold half as "
                                   "many clips in May. How many clips did Natalia sell altogether?\n\n")
        layouts = {}
        for mode in ("merge", "unmerged"):
            eng = Engine.from_pretrained(args.slm, base=args.slm, slm_adapter=str(ad), adapter_mode=mode,
                                         dtype=args.dtype, kv_memory_bytes=256 << 20)
            runs = {"proxy": [], "tuned": []}
            for _ in range(args.repeats):
                runs["proxy"].append(decode(eng, ["slm", "base"], prompt, args.tokens))
                runs["tuned"].append(decode(eng, ["slm"], prompt, args.tokens))
            layouts[mode] = {"resident_models": len(eng.models), "weight_bytes": resident_bytes(eng),
                             **{f"{k}_ms_per_token": round(1e3 * min(v), 2) for k, v in runs.items()}}
            del eng
    m, u = layouts["merge"], layouts["unmerged"]
    out = {"slm": args.slm, "rank": args.rank, "tokens": args.tokens, "dtype": args.dtype,
           "torch": torch.__version__, "threads": torch.get_num_threads(), "layouts": layouts,
           "memory_ratio_unmerged_over_two_copies": round(u["weight_bytes"] / m["weight_bytes"], 3),
           "proxy_speedup_unmerged": round(m["proxy_ms_per_token"] / u["proxy_ms_per_token"], 2),
           "tuned_slowdown_unmerged": round(u["tuned_ms_per_token"] / m["tuned_ms_per_token"], 2)}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
