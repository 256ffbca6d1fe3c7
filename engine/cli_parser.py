"""The ``gboost`` argument parser: every subcommand's flags. The commands themselves are in cli.py,
which picks one by ``args.cmd`` (this module imports no command, so flags can be read in isolation)."""
from __future__ import annotations

import argparse

from gboost.server.limits import DEFAULT_MAX_BODY_BYTES  # a constant; the module imports no server


def _add_runtime_args(p, kv_gb: float):
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
    p.add_argument("--weights", default="bf16", choices=["bf16", "int8", "int4"],
                   help="format of every model's linear weights: bf16 (the --dtype), int8 per channel, or int4 "
                        "in groups of 32 (a GGUF's 4-bit tensors exactly, others requantized)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--kv-memory-gb", type=float, default=kv_gb, help="budget of the shared KV pool")


def _at_least_one(text: str) -> int:
    try:
        n = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {n}")
    return n


def _add_stack_args(p):
    from gboost.prm.value_head import shipped_heads
    from gboost.search.config import PRM_KINDS
    from gboost.stack import DEFAULT_LLM, DEFAULT_SLM
    p.add_argument("--slm", default=DEFAULT_SLM, help="private small model: demo name, HF dir, hub id or .gguf")
    p.add_argument("--slm-adapter", default=None, metavar="DIR",
                   help="a LoRA adapter for the SLM, as peft saves it (adapter_config.json + "
                        "adapter_model.safetensors), or a shipped adapter's name (gsm8k-qwen2.5-coder-0.5b)")
    p.add_argument("--slm-adapter-mode", default="auto", choices=["auto", "merge", "unmerged"],
                   help="merge: into a copy of the SLM's weights at load (fastest for one SLM); unmerged: one "
                        "resident base, the delta on the SLM's rows only; auto: unmerged when --base is the "
                        "SLM's own checkpoint (proxy tuning from one copy), else merge")
    p.add_argument("--llm", default=DEFAULT_LLM,
                   help="general LLM: model name/path (resident) or http(s)://HOST:PORT/v1 endpoint; 'none' to disable")
    p.add_argument("--llm-kind", default="auto", choices=["auto", "completions", "chat"],
                   help="what a remote --llm offers: completions (token ids + echo logprobs: fused steps), "
                        "chat (a hosted chat API: delegated steps); auto probes at start-up")
    p.add_argument("--llm-prompt", default="auto", choices=["auto", "ids", "text"],
                   help="how a remote completions --llm gets prompts: token ids, or their text (servers that "
                        "refuse ids, e.g. llama-cpp-python); auto probes at start-up and says which")
    p.add_argument("--llm-model", default=None,
                   help="model name at a remote --llm (default: the first it lists); the API key is read "
                        "from $GBOOST_LLM_API_KEY")
    p.add_argument("--prm", default=None, help="PRM model (default: the local LLM as a judge, else the SLM), "
                                                "or value-head:DIR (a head from `gboost train-prm`) or value-head:NAME "
                                                f"(shipped with gboost: {', '.join(shipped_heads())})")
    p.add_argument("--prm-kind", default="judge", choices=PRM_KINDS,
                   help="value_head: --prm names a head (value-head:DIR from `gboost train-prm`, or a shipped NAME)")
    p.add_argument("--base", default=None,
                   help="the SLM's untuned base model (same tokenizer): needed by fusion_rule = \"proxy\"")
    p.add_argument("--config", default=None, help="SearchConfig file (.json or .toml)")
    p.add_argument("--collab-mode", default="speculative", choices=["speculative", "exact"])
    p.add_argument("--max-draft", type=_at_least_one, default=16, metavar="K",
                   help="speculative LLM-involving steps: SLM tokens drafted per LLM call (the LLM computes "
                        "every drafted position, accepted or not: fewer wastes fewer LLM tokens, more calls)")
    p.add_argument("--draft-policy", default="fixed", choices=["fixed", "adaptive"],
                   help="adaptive: start at 4 drafted tokens, double after a fully accepted round, else draft "
                        "one more than were accepted (at most --max-draft)")
    p.add_argument("--on-llm-fault", default="fallback", choices=["fallback", "fail"])


def _add_model_args(p):
    _add_stack_args(p)
    p.add_argument("--method", default=None, help="gboost | slm | llm | fusion | bon | beam | rsd")
    p.add_argument("--seed", type=int, default=None)
    _add_runtime_args(p, kv_gb=2.0)
    p.add_argument("--json", action="store_true", help="print one JSON object")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="gboost", description="PRM-guided SLM-LLM collaboration engine")
    sub = ap.add_subparsers(dest="cmd", required=True)

    g = sub.add_parser("generate", help="sample from one model")
    g.add_argument("prompt")
    g.add_argument("--model", required=True, help="demo name, HF dir, hub id or .gguf file")
    g.add_argument("--max-tokens", type=int, default=64)
    g.add_argument("--temperature", type=float, default=0.0)
    g.add_argument("--top-p", type=float, default=1.0)
    g.add_argument("--top-k", type=int, default=0)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--chat", action="store_true", help="apply the model's chat template")
    g.add_argument("--json", action="store_true")
    _add_runtime_args(g, kv_gb=1.0)

    s = sub.add_parser("solve", help="solve one question with G-Boost or a baseline")
    s.add_argument("question")
    _add_model_args(s)
    s.add_argument("--trace", default=None, help="write the search tree as JSON to this file")

    e = sub.add_parser("eval", help="accuracy and cost on GSM8K / MATH-500 JSONL")
    e.add_argument("--data", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--lines", default=None, help="1-based inclusive line range of --data, e.g. 1-100")
    e.add_argument("--out", default=None, help="per-question records (JSONL)")
    e.add_argument("--concurrency", type=int, default=4)
    e.add_argument("--resume", action="store_true",
                   help="keep the records already in --out (same config) and solve only the rest")
    _add_model_args(e)

    r = sub.add_parser("train-prm", help="train a step-value head (a PRM) from sampled solutions of a data set")
    r.add_argument("--data", required=True, help="JSONL of questions with gold answers (GSM8K, MATH, or plain)")
    r.add_argument("--out", required=True, help="directory for rollouts, features and the head (resumable)")
    r.add_argument("--lines", default=None, help="1-based inclusive line range of --data, e.g. 201-1000")
    r.add_argument("--limit", type=int, default=None)
    r.add_argument("--samples", type=int, default=4, help="solutions sampled per question")
    r.add_argument("--collab-share", type=float, default=0.3, help="share of collaborative rollout steps")
    r.add_argument("--llm-share", type=float, default=0.0,
                   help="share of rollout steps the general LLM writes alone (as a search's delegated children)")
    r.add_argument("--mc-rollouts", type=int, default=0, help="SLM completions per step for soft (mc) labels")
    r.add_argument("--labels", default="outcome", choices=["outcome", "mc"])
    r.add_argument("--features", default="slm", choices=["slm", "llm"], help="whose hidden rows the head reads")
    r.add_argument("--layers", type=int, nargs="+", default=None, help="candidate decoder layers (1-based)")
    r.add_argument("--mlp-hidden", type=int, default=0, help="0: logistic regression; else an MLP of this width")
    r.add_argument("--concurrency", type=int, default=16)
    r.add_argument("--max-chain-tokens", type=int, default=1024,
                   help="stop a rollout whose steps reach this many tokens (graded as it stands); 0: no cap")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--fit-only", action="store_true",
                   help="sample nothing: fit on the rollouts already in --out (those of --lines)")
    _add_stack_args(r)
    _add_runtime_args(r, kv_gb=3.0)

    v = sub.add_parser("serve", help="OpenAI-compatible /v1/completions for one model, or "
                                      "/v1/solve (G-Boost, JSON or SSE) with --solve")
    v.add_argument("--model", default=None, help="serve this model's /v1/completions")
    v.add_argument("--solve", action="store_true",
                   help="serve /v1/solve on the --slm/--llm/--prm stack (and the SLM's /v1/completions)")
    _add_stack_args(v)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--served-name", default=None)
    v.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=DIR",
                   help="LoRA adapters (peft directories) kept unmerged on the SLM's (or --model's) one resident "
                        "copy; a request names one as its \"model\" (/v1/completions, chat) or \"adapter\" "
                        "(/v1/solve), and requests of several adapters share forwards")
    v.add_argument("--api-key-env", default=None, help="require Bearer auth with the key in this env variable")
    v.add_argument("--fault-latency", type=float, default=0.0, help="seconds added to every call (testing)")
    v.add_argument("--fault-error-rate", type=float, default=0.0)
    v.add_argument("--fault-malformed-rate", type=float, default=0.0)
    v.add_argument("--fault-status", type=int, default=503)
    v.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="seconds requests in flight get to finish after SIGINT/SIGTERM before they are cancelled")
    v.add_argument("--max-body-bytes", type=int, default=DEFAULT_MAX_BODY_BYTES,
                   help="refuse a request body larger than this with 413, before reading it all "
                        f"(default {DEFAULT_MAX_BODY_BYTES} = {DEFAULT_MAX_BODY_BYTES >> 20} MiB)")
    _add_runtime_args(v, kv_gb=1.0)

    t = sub.add_parser("trace", help="draw a --trace JSON file as HTML/SVG")
    t.add_argument("file")
    t.add_argument("--out", default="tree.html")

    b = sub.add_parser("bench", help="the engine against the same search on plain transformers: end to end, "
                                      "decode, per-action overhead; one table")
    b.add_argument("--quick", action="store_true", help="tiny random models written on the spot (minutes on a "
                                                         "CPU) instead of the demo pair")
    b.add_argument("--slm", default=None, help="SLM (default: the demo 0.5B)")
    b.add_argument("--llm", default=None, help="general LLM and judge PRM (default: the demo 1.5B)")
    b.add_argument("--config", default=None, help="SearchConfig file; sampling is made greedy either way")
    b.add_argument("--simulations", type=int, default=None, help="num_simulations of the gboost runs")
    b.add_argument("--questions", type=int, default=None, help="requests per method (default 8)")
    b.add_argument("--inflight", type=int, nargs="+", default=None,
                   help="engine requests in flight (default: 8 with --quick, 8 32 on the demo pair)")
    b.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="both implementations (float32: greedy choices must agree)")
    b.add_argument("--device", default="cpu")
    b.add_argument("--kv-memory-gb", type=float, default=4.0)
    b.add_argument("--json", action="store_true", help="print the rows as one JSON object")

    sub.add_parser("models", help="list the demo models known by name")
    return ap
