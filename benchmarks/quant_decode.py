"""Weight formats on the CPU (issue 35): the engine with --weights bf16, int8 and int4 against
transformers (bf16) and llama.cpp (llama-cpp-python, on the same GGUF file, where installed), one
model, one process, taking turns.

    python benchmarks/quant_decode.py --model qwen2.5-coder-0.5b [--new 32] [--no-hf] [--no-llamacpp]

Per format: load seconds, the bytes of the model's tensors, greedy decode tok/s at batch 1 and 8
(median of 3, --new tokens each, EOS ignored), prefill tok/s (one prompt of --prefill tokens), and
quality on 24 prompts (16 GSM8K questions from the tuning lines 201-216 in the SLM's chat format,
8 code prompts): greedy outputs identical to bf16's, the mean tokens agreeing before the first
difference, and the largest |logit - reference| of each prompt's next token, the reference being
the engine in fp32 on the file's dequantized values. llama.cpp decodes one sequence at a time
through llama-cpp-python's API (no batch-8 number), with as many threads as torch uses. Prints one
JSON line per format, then a table.
"""
from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from gboost.engine import Engine
from gboost.sampling import SamplingParams

HERE = Path(__file__).resolve().parent
DATA = HERE.parents[1] / "shared" / "data" / "gsm8k_test.jsonl"
CODE = "Write a Python function that checks whether a number is prime.\n"


def model_bytes(model: torch.nn.Module) -> int:
    """Bytes of every tensor a model holds (parameters, buffers, packed attributes), each once; not
    the views of the KV pool its attention layers are bound to."""
    seen, total = set(), 0
    for mod in model.modules():
        for t in list(mod.parameters(recurse=False)) + list(mod.buffers(recurse=False)) + [
                v for k, v in vars(mod).items() if isinstance(v, torch.Tensor) and k not in ("k_cache", "v_cache")]:
            if t.is_mkldnn:  # oneDNN's packed bf16 weight: the same bytes as its dense form
                key, n = id(t), t.to_dense().nbytes
            else:
                key, n = (t.untyped_storage().data_ptr(), t.device), t.untyped_storage().nbytes()
            if key not in seen:
                seen.add(key)
                total += n
    return total


def prompts(tok) -> list[list[int]]:
    qs = [json.loads(x)["question"] for x in DATA.read_text().splitlines()[200:216]]
    code = tok.encode(CODE)
    return [tok.encode_chat([{"role": "user", "content": q}]) for q in qs] + [code + [i] for i in range(8)]


def prefill_prompt(tok, prefill: int) -> list[int]:
    """The prefill timing's prompt: tuning lines 201-230's questions, cut to ``prefill`` tokens."""
    return tok.encode(" ".join(json.loads(x)["question"] for x in DATA.read_text().splitlines()[200:230]))[:prefill]


def slm_tokenizer(model: str):
    """The engine's tokenizer of ``model``: every implementation gets the engine's prompt ids."""
    return Engine.from_pretrained(model, num_blocks=1).role("slm").tokenizer


def timed(f, rounds: int = 3) -> float:
    f()
    ts = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)


def next_logits(eng, ids_list) -> list[torch.Tensor]:
    m = eng.role("slm")
    out = []
    for ids in ids_list:
        seq = m.new_sequence(eng.cache, ids)
        out.append(m.runner.run([seq], "last")[0].float())
        eng.cache.free(seq)
    return out


def measure_engine(model: str, fmt: str, new: int, prefill: int, ref_logits=None, ref_tokens=None) -> dict:
    t0 = time.perf_counter()
    eng = Engine.from_pretrained(model, dtype="float32" if fmt == "fp32" else "bfloat16",
                                 weights="bf16" if fmt == "fp32" else fmt, kv_memory_bytes=1 << 30)
    row = {"impl": "gboost", "weights": fmt, "load_s": round(time.perf_counter() - t0, 2),
           "model_bytes": model_bytes(eng.role("slm").model)}
    tok = eng.role("slm").tokenizer
    ps = prompts(tok)
    sp = SamplingParams(temperature=0.0, max_tokens=new, ignore_eos=True)
    logits = next_logits(eng, ps)
    if fmt == "fp32":
        return {**row, "logits": logits}
    code = tok.encode(CODE)
    for b in (1, 8):
        batch = [code + [i] for i in range(b)]
        row[f"b{b}_tok_s"] = round(b * new / timed(lambda: eng.generate(batch, sp)), 2)
    long = prefill_prompt(tok, prefill)
    row["prefill_tok_s"] = round(len(long) / timed(lambda: eng.generate([long], SamplingParams(max_tokens=1))), 1)
    toks = [o.token_ids for o in eng.generate(ps, sp)]
    if ref_logits is not None:
        row["max_logit_err_vs_fp32"] = round(max((a - b).abs().max().item() for a, b in zip(logits, ref_logits)), 4)
    if ref_tokens is not None:
        agree = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(toks, ref_tokens)]
        row["identical_to_bf16"] = f"{sum(a == new for a in agree)}/{len(agree)}"
        row["mean_agreeing_tokens"] = round(sum(agree) / len(agree), 1)
    row["tokens"] = toks
    del eng
    gc.collect()
    return row


def measure_hf(model: str, new: int, prefill: int) -> dict:
    import transformers
    from gboost.models import registry
    path = registry.model_path(model)
    t0 = time.perf_counter()
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                           dtype=torch.bfloat16).eval()
    row = {"impl": "transformers", "weights": "bf16", "load_s": round(time.perf_counter() - t0, 2),
           "model_bytes": sum(p.nbytes for p in hf.parameters())}
    tok = slm_tokenizer(model)
    code = tok.encode(CODE)
    for b in (1, 8):
        batch = torch.tensor([code + [i] for i in range(b)])
        with torch.no_grad():
            row[f"b{b}_tok_s"] = round(b * new / timed(lambda: hf.generate(
                batch, max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)), 2)
    long = prefill_prompt(tok, prefill)
    with torch.no_grad():
        row["prefill_tok_s"] = round(len(long) / timed(lambda: hf(torch.tensor([long]))), 1)
    del hf
    gc.collect()
    return row


def measure_llamacpp(model: str, new: int, prefill: int, ref_tokens=None) -> dict:
    """llama.cpp on the GGUF the engine loads: greedy (top_k 1), EOS not checked, the KV state reset
    before every timed call so nothing is reused across rounds."""
    import llama_cpp
    from gboost.models import registry
    path = registry.model_path(model)
    t0 = time.perf_counter()
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_batch=512, n_threads=torch.get_num_threads(),
                          n_threads_batch=torch.get_num_threads(), verbose=False)
    row = {"impl": "llama.cpp", "weights": f"gguf ({llama_cpp.__version__})",
           "load_s": round(time.perf_counter() - t0, 2), "model_bytes": path.stat().st_size}
    tok = slm_tokenizer(model)

    def greedy(ids, n):
        llm.reset()
        out = []
        for t in llm.generate(ids, top_k=1, temp=0.0, reset=True):
            out.append(int(t))
            if len(out) == n:
                return out
        return out

    code = tok.encode(CODE)
    row["b1_tok_s"] = round(new / timed(lambda: greedy(code, new)), 2)
    row["b8_tok_s"] = "-"
    long = prefill_prompt(tok, prefill)

    def prefill_once():
        llm.reset()
        llm.eval(long)
    row["prefill_tok_s"] = round(len(long) / timed(prefill_once), 1)
    if ref_tokens is not None:
        toks = [greedy(ids, new) for ids in prompts(tok)]
        agree = [next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), len(a)) for a, b in zip(toks, ref_tokens)]
        row["identical_to_bf16"] = f"{sum(a == new for a in agree)}/{len(agree)}"
        row["mean_agreeing_tokens"] = round(sum(agree) / len(agree), 1)
    del llm
    gc.collect()
    return row


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b")
    ap.add_argument("--new", type=int, default=32)
    ap.add_argument("--prefill", type=int, default=256)
    ap.add_argument("--formats", default="bf16,int8,int4")
    ap.add_argument("--no-hf", action="store_true", help="skip the transformers baseline")
    ap.add_argument("--no-fp32", action="store_true", help="skip the fp32 logits reference")
    ap.add_argument("--no-llamacpp", action="store_true", help="skip llama.cpp (also skipped when not installed)")
    args = ap.parse_args(argv)
    print(json.dumps({"model": args.model, "torch": torch.__version__, "threads": torch.get_num_threads(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "date": time.strftime("%Y-%m-%d %H:%M")}), flush=True)
    ref = None if args.no_fp32 else measure_engine(args.model, "fp32", args.new, args.prefill)["logits"]
    rows, ref_tokens = [], None
    for fmt in args.formats.split(","):
        row = measure_engine(args.model, fmt, args.new, args.prefill, ref, ref_tokens)
        if fmt == "bf16":
            ref_tokens = row["tokens"]
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "tokens"}), flush=True)
    if not args.no_hf:
        rows.append(measure_hf(args.model, args.new, args.prefill))
        print(json.dumps(rows[-1]), flush=True)
    if not args.no_llamacpp:
        try:
            import llama_cpp  # noqa: F401
        except ImportError:
            print("llama.cpp: llama-cpp-python is not installed (pip install llama-cpp-python); skipped", flush=True)
        else:
            rows.append(measure_llamacpp(args.model, args.new, args.prefill, ref_tokens))
            print(json.dumps(rows[-1]), flush=True)
    base = next(r for r in rows if r["impl"] == "gboost" and r["weights"] == "bf16") if "bf16" in args.formats else rows[0]
    llama = next((r for r in rows if r["impl"] == "llama.cpp"), None)
    print("\n| impl | weights | MB | load s | b1 tok/s | b8 tok/s | prefill tok/s | b1 vs bf16 | b1 vs llama.cpp | "
          "identical to bf16 | agreeing tokens | max logit err vs fp32 |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        vs_llama = f"{r['b1_tok_s'] / llama['b1_tok_s']:.2f}x" if llama else "-"
        print(f"| {r['impl']} | {r['weights']} | {r['model_bytes'] / 2**20:.0f} | {r['load_s']} | {r['b1_tok_s']} | "
              f"{r['b8_tok_s']} | {r['prefill_tok_s']} | {r['b1_tok_s'] / base['b1_tok_s']:.2f}x | {vs_llama} | "
              f"{r.get('identical_to_bf16', '-')} | {r.get('mean_agreeing_tokens', '-')} | "
              f"{r.get('max_logit_err_vs_fp32', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
