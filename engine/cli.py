"""gboost command line: generate, solve, eval, train-prm, serve, trace, bench, models."""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time


def _add_runtime_args(p, kv_gb: float):
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32", "float16"])
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
    from gboost.models.value_head import shipped_heads
    from gboost.search.config import PRM_KINDS
    from gboost.stack import DEFAULT_LLM, DEFAULT_SLM
    p.add_argument("--slm", default=DEFAULT_SLM, help="private small model: demo name, HF dir, hub id or .gguf")
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


def _search_config(args):
    """--config's SearchConfig; keys it does not set take the defaults of the PRM kind to be run."""
    from gboost.search.config import SearchConfig, prm_kind_of
    kind = prm_kind_of(getattr(args, "prm", None), getattr(args, "prm_kind", "judge"))
    cfg = SearchConfig.from_file(args.config, kind) if args.config else SearchConfig.from_dict({}, kind)
    if getattr(args, "method", None):
        cfg.method = args.method
    if getattr(args, "seed", None) is not None:
        cfg.seed = args.seed
    cfg.validate()
    return cfg


async def _stack(args, cfg, check: bool = True, serving: bool = False):
    """The stack for ``cfg``; with ``check`` a config it cannot run is refused (ConfigError, exit 2)
    before any model loads -- serve checks each request's config instead. Forwards leave the event
    loop only where it has other work: serving HTTP, or waiting on a remote LLM."""
    from gboost.collab.executor import CollabOptions
    from gboost.search.config import check_stack_runs
    from gboost.stack import build_stack, is_url
    llm = None if args.llm in (None, "", "none") else args.llm
    if check:  # what a URL offers is known after its probe: build_stack checks that
        check_stack_runs(cfg, has_llm=llm is not None and args.llm_kind != "chat", has_base=bool(args.base),
                         has_writer=is_url(llm) and args.llm_kind != "completions")
    stack = await build_stack(cfg, slm=args.slm, llm=llm, prm=args.prm, prm_kind=args.prm_kind, base=args.base,
                              dtype=args.dtype, device=args.device, kv_memory_gb=args.kv_memory_gb,
                              options=CollabOptions(collab_mode=args.collab_mode, on_llm_fault=args.on_llm_fault,
                                                    max_draft=args.max_draft, draft_policy=args.draft_policy),
                              llm_kind=args.llm_kind, llm_model=args.llm_model, llm_prompt=args.llm_prompt,
                              offload=serving or is_url(llm))
    if getattr(stack.llm, "prompt_note", None):  # one line: which prompt mode the probe chose
        print(f"general LLM at {stack.llm.display_url}: {stack.llm.prompt_note}", file=sys.stderr)
    return stack


# -- generate -------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from gboost.engine import Engine
    from gboost.sampling import SamplingParams
    eng = Engine.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                 kv_memory_bytes=int(args.kv_memory_gb * (1 << 30)))
    m = eng.role("slm")
    if args.chat:
        if not m.tokenizer.chat_template:
            raise SystemExit(f"error: {args.model} has no chat template; drop --chat")
        ids = m.tokenizer.encode_chat([{"role": "user", "content": args.prompt}])
    else:
        ids = m.tokenizer.encode_prompt(args.prompt)
    t0 = time.perf_counter()
    out = eng.generate([ids], SamplingParams(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k,
                                             max_tokens=args.max_tokens, seed=args.seed))[0]
    dt = time.perf_counter() - t0
    if args.json:
        print(json.dumps({"text": out.text, "token_ids": out.token_ids, "seconds": round(dt, 4),
                          "finish_reason": out.finish_reason, "prompt_tokens": len(ids)}))
    else:
        print(out.text)
        print(f"[{len(out.token_ids)} tokens in {dt:.2f}s, {len(out.token_ids) / max(dt, 1e-9):.1f} tok/s]",
              file=sys.stderr)
    return 0


# -- solve ----------------------------------------------------------------------------------
def cmd_solve(args) -> int:
    cfg = _search_config(args)

    async def main():
        from gboost.search.api import solve
        stack = await _stack(args, cfg)
        def on_step(step):
            if not args.json:
                r = step.get("reward")
                print(f"[step {step['index'] + 1} · {step['action']} · reward "
                      f"{'-' if r is None else f'{r:.3f}'}] {step['text']}", flush=True)
        try:
            res = await solve(args.question, stack.executor, cfg, on_step=on_step)
        finally:
            await stack.aclose()
        if args.trace:
            from gboost.trace import to_json
            with open(args.trace, "w") as f:
                json.dump(to_json(res.root, res.chosen), f, indent=1)
        if args.json:
            print(json.dumps({"answer": res.answer, "steps": res.steps, "cost": res.cost.to_dict(),
                              "method": res.method, "score": res.score}))
        else:
            print(f"answer: {res.answer}")
            print(f"cost: {json.dumps(res.cost.to_dict())}", file=sys.stderr)
        return 0
    return asyncio.run(main())


# -- eval -----------------------------------------------------------------------------------
def cmd_eval(args) -> int:
    cfg = _search_config(args)
    if args.resume and not args.out:
        raise SystemExit("error: --resume needs --out (the records to resume)")

    from gboost.evals.datasets import load_lines, parse_lines
    rows = load_lines(args.data, parse_lines(args.lines))  # a bad file or range fails before loading

    async def main():
        from gboost.evals.loop import run_eval
        stack = await _stack(args, cfg)
        try:
            report = await run_eval(rows, stack.executor, cfg, limit=args.limit, out_path=args.out,
                                    concurrency=args.concurrency, resume=args.resume)
        finally:
            await stack.aclose()
        d = report.to_dict() if hasattr(report, "to_dict") else dict(report)
        if args.json:
            print(json.dumps(d))
        else:
            lo, hi = d["ci95"]
            print(f"{cfg.method}: accuracy {d['accuracy']:.3f} (95% CI {lo:.3f}-{hi:.3f}) over n={d['n']}")
            print(f"cost: {json.dumps(d['cost'])}")
        return 0
    return asyncio.run(main())


# -- train-prm ------------------------------------------------------------------------------
def cmd_train_prm(args) -> int:
    from pathlib import Path

    from gboost.prm_train.fit import FitConfig
    from gboost.prm_train.pipeline import TrainPlan, fit_records, train_prm
    from gboost.prm_train.rollouts import RolloutPlan
    from gboost.search.config import SearchConfig
    plan = TrainPlan(RolloutPlan(samples=args.samples, collab_share=args.collab_share, llm_share=args.llm_share,
                                 mc_rollouts=args.mc_rollouts,
                                 concurrency=args.concurrency,
                                 max_tokens=args.max_chain_tokens if args.max_chain_tokens > 0 else None),
                     features=args.features, layers=args.layers, labels=args.labels,
                     fit=FitConfig(mlp_hidden=args.mlp_hidden, seed=args.seed))
    plan.validate()
    from gboost.evals.datasets import load_lines, parse_lines
    lines = parse_lines(args.lines)
    rows = load_lines(args.data, lines, args.limit)
    if args.fit_only:  # the rollouts already in --out, within --lines: no sampling
        from gboost.prm_train.rollouts import read_records
        want = {row.idx + 1 for row in rows}
        records = [r for key, r in sorted(read_records(Path(args.out) / "rollouts.jsonl").items()) if key[0] in want]
        if not records:
            raise ValueError(f"--fit-only: {args.out}/rollouts.jsonl has no rollouts of these lines")
    cfg = SearchConfig.from_file(args.config) if args.config else SearchConfig(temperature=0.7, top_p=0.95)
    cfg = cfg.replace(seed=args.seed)
    llm = None if args.llm in (None, "", "none") else args.llm
    if (plan.rollouts.collab_share > 0 or plan.rollouts.llm_share > 0) and llm is None:
        raise ValueError("collaborative or LLM-written rollout steps need a general LLM: pass --llm, "
                         "or --collab-share 0 (and --llm-share 0)")

    async def main():
        from gboost.collab.executor import CollabOptions
        from gboost.stack import build_stack, is_url
        stack = await build_stack(cfg, slm=args.slm, llm=llm, prm="none", dtype=args.dtype, device=args.device,
                                  kv_memory_gb=args.kv_memory_gb,
                                  options=CollabOptions(collab_mode=args.collab_mode, max_draft=args.max_draft,
                                                        draft_policy=args.draft_policy),
                                  llm_kind=args.llm_kind, llm_model=args.llm_model,
                                  llm_prompt=args.llm_prompt, offload=is_url(llm))
        try:
            desc = {"path": str(Path(args.data).resolve()), "lines": list(lines) if lines else None}
            if args.fit_only:
                card = await asyncio.to_thread(fit_records, stack.engine, cfg, records, args.out, plan,
                                               {"data": desc, "fit_only": True})
                recs = records
            else:
                card, recs = await train_prm(stack.executor, cfg, rows, args.out, plan, data_desc=desc)
        finally:
            await stack.aclose()
        m = {k: float("nan") if v is None else v for k, v in card.metrics.items()}
        print(f"{len(recs)} solutions of {card.training['questions']} questions, "
              f"{sum(r['correct'] for r in recs)} right; head on {card.base_model} layer {card.layer}: "
              f"held-out AUROC {m['auroc_val_steps']:.3f} (steps); paths by last/min/mean step "
              + "/".join(f"{m[f'auroc_val_path_{a}']:.3f}" for a in ("last", "min", "mean")))
        print(f"use it with: --prm value-head:{args.out}")
        return 0
    return asyncio.run(main())


# -- serve ----------------------------------------------------------------------------------
def cmd_serve(args) -> int:
    import os

    from gboost.engine import Engine
    from gboost.scheduler import Scheduler
    from gboost.server.app import serve
    from gboost.server.engine_backend import EngineCompletionBackend
    from gboost.server.faults import FaultConfig
    from gboost.server.solve import Solver
    if (args.model is None) == (not args.solve):
        raise SystemExit("error: give --model (one model's completions) or --solve (the G-Boost stack)")
    fault = FaultConfig(latency_s=args.fault_latency, error_rate=args.fault_error_rate,
                        malformed_rate=args.fault_malformed_rate, status_code=args.fault_status)
    api_key = os.environ.get(args.api_key_env) if args.api_key_env else None
    if args.solve:
        cfg = _search_config(args)

        async def main():
            from gboost.server.app import aserve, create_app
            from gboost.server.sse import cancel_and_wait
            # the stack is built on the loop that serves it (scheduler and LLM client bind to it)
            stack = await _stack(args, cfg, check=False, serving=True)
            try:
                backend = EngineCompletionBackend(stack.engine, stack.scheduler,
                                                  model_name=args.served_name or args.slm)
                solver = Solver(stack.executor, cfg)
                app = create_app(backend, fault=fault if fault.active else None, api_key=api_key, solver=solver)
                seen = {}
                sig = await aserve(app, host=args.host, port=args.port, graceful_shutdown_s=args.shutdown_grace,
                                   on_signal=lambda: seen.setdefault("cancelled", solver.cancelled))
                # a second Ctrl-C skips uvicorn's grace: cancel what still runs, so that its cleanup
                # (every search frees its KV blocks) is done before the count below
                await cancel_and_wait(*(asyncio.all_tasks() - {asyncio.current_task()}))
            finally:
                await stack.aclose()
            n = solver.cancelled - seen.get("cancelled", solver.cancelled)
            return _stopped(sig, stack.engine.cache, f"{n} search{'' if n == 1 else 'es'} still running after "
                                                     f"the {args.shutdown_grace:g} s grace cancelled")
        return asyncio.run(main())
    eng = Engine.from_pretrained(args.model, dtype=args.dtype, device=args.device,
                                 kv_memory_bytes=int(args.kv_memory_gb * (1 << 30)))
    backend = EngineCompletionBackend(eng, Scheduler(eng), model_name=args.served_name or args.model)
    sig = serve(backend, host=args.host, port=args.port, fault=fault if fault.active else None, api_key=api_key,
                graceful_shutdown_s=args.shutdown_grace)
    return _stopped(sig, eng.cache)


def _stopped(sig, cache, what: str | None = None) -> int:
    """The one line a signalled server ends with, and its exit status: 130 after SIGINT (Ctrl-C),
    0 after SIGTERM (a requested stop), 0 if it stopped without a signal."""
    if sig is None:
        return 0
    import signal
    blocks = cache.blocks
    print(f"gboost serve: stopped by {signal.Signals(sig).name}" + (f"; {what}" if what else "")
          + f"; {blocks.num_free()} of {blocks.num_blocks} KV blocks free, {len(cache.live)} sequences live",
          file=sys.stderr)
    return 130 if sig == signal.SIGINT else 0


# -- trace ----------------------------------------------------------------------------------
def cmd_trace(args) -> int:
    from gboost.trace import save_html
    with open(args.file) as f:
        obj = json.load(f)
    out = save_html(args.out, obj)
    print(out)
    return 0


def cmd_bench(args) -> int:
    from gboost.bench import main as bench_main
    return bench_main(args)


def cmd_models(args) -> int:
    from gboost.models.registry import list_models
    for name in list_models():
        print(name)
    return 0


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
    g.set_defaults(fn=cmd_generate)

    s = sub.add_parser("solve", help="solve one question with G-Boost or a baseline")
    s.add_argument("question")
    _add_model_args(s)
    s.add_argument("--trace", default=None, help="write the search tree as JSON to this file")
    s.set_defaults(fn=cmd_solve)

    e = sub.add_parser("eval", help="accuracy and cost on GSM8K / MATH-500 JSONL")
    e.add_argument("--data", required=True)
    e.add_argument("--limit", type=int, default=None)
    e.add_argument("--lines", default=None, help="1-based inclusive line range of --data, e.g. 1-100")
    e.add_argument("--out", default=None, help="per-question records (JSONL)")
    e.add_argument("--concurrency", type=int, default=4)
    e.add_argument("--resume", action="store_true",
                   help="keep the records already in --out (same config) and solve only the rest")
    _add_model_args(e)
    e.set_defaults(fn=cmd_eval)

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
    r.set_defaults(fn=cmd_train_prm)

    v = sub.add_parser("serve", help="OpenAI-compatible /v1/completions for one model, or "
                                      "/v1/solve (G-Boost, JSON or SSE) with --solve")
    v.add_argument("--model", default=None, help="serve this model's /v1/completions")
    v.add_argument("--solve", action="store_true",
                   help="serve /v1/solve on the --slm/--llm/--prm stack (and the SLM's /v1/completions)")
    _add_stack_args(v)
    v.add_argument("--host", default="127.0.0.1")
    v.add_argument("--port", type=int, default=8000)
    v.add_argument("--served-name", default=None)
    v.add_argument("--api-key-env", default=None, help="require Bearer auth with the key in this env variable")
    v.add_argument("--fault-latency", type=float, default=0.0, help="seconds added to every call (testing)")
    v.add_argument("--fault-error-rate", type=float, default=0.0)
    v.add_argument("--fault-malformed-rate", type=float, default=0.0)
    v.add_argument("--fault-status", type=int, default=503)
    v.add_argument("--shutdown-grace", type=float, default=5.0,
                   help="seconds requests in flight get to finish after SIGINT/SIGTERM before they are cancelled")
    _add_runtime_args(v, kv_gb=1.0)
    v.set_defaults(fn=cmd_serve)

    t = sub.add_parser("trace", help="draw a --trace JSON file as HTML/SVG")
    t.add_argument("file")
    t.add_argument("--out", default="tree.html")
    t.set_defaults(fn=cmd_trace)

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
    b.set_defaults(fn=cmd_bench)

    m = sub.add_parser("models", help="list the demo models known by name")
    m.set_defaults(fn=cmd_models)
    return ap


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("serve", "eval", "solve", "train-prm"):
        from gboost.malloc import tune_malloc
        tune_malloc()
    from gboost.llm.base import LLMError
    try:
        return args.fn(args)
    except LLMError as e:  # start-up check of a remote LLM: unreachable, 401, other vocabulary
        print(f"error: general LLM: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a server runs (loading models, a solve, an eval)
        print("gboost: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
