"""gboost command line: generate, solve, eval, train-prm, serve, trace, bench, models (the entry point,
``main``, and each subcommand's body; the flags are in cli_parser.py)."""
from __future__ import annotations

import asyncio
import json
import sys
import time

from gboost.cli_parser import build_parser


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
                              slm_adapter=args.slm_adapter, slm_adapter_mode=args.slm_adapter_mode,
                              dtype=args.dtype, weights=args.weights, device=args.device, kv_memory_gb=args.kv_memory_gb,
                              options=CollabOptions(collab_mode=args.collab_mode, on_llm_fault=args.on_llm_fault,
                                                    max_draft=args.max_draft, draft_policy=args.draft_policy),
                              llm_kind=args.llm_kind, llm_model=args.llm_model, llm_prompt=args.llm_prompt,
                              offload=serving or is_url(llm))
    if stack.llm is not None and stack.llm.prompt_note:  # one line: which prompt mode the probe chose
        print(f"general LLM at {stack.llm.display_url}: {stack.llm.prompt_note}", file=sys.stderr)
    return stack


# -- generate -------------------------------------------------------------------------------
def cmd_generate(args) -> int:
    from gboost.engine import Engine
    from gboost.sampling import SamplingParams
    eng = Engine.from_pretrained(args.model, dtype=args.dtype, weights=args.weights, device=args.device,
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
            print(json.dumps(res.to_dict()))  # the shape /v1/solve and the C ABI answer
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
        stack = await build_stack(cfg, slm=args.slm, llm=llm, prm="none", slm_adapter=args.slm_adapter,
                                  slm_adapter_mode=args.slm_adapter_mode,
                                  dtype=args.dtype, weights=args.weights, device=args.device,
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
    from gboost.server.limits import check_body_limit
    try:  # before any model loads
        check_body_limit(args.max_body_bytes)
    except ValueError as e:
        raise SystemExit(f"error: --max-body-bytes: {e}") from None
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
                _add_lora_modules(stack.engine, args.lora_modules)
                backend = EngineCompletionBackend(stack.engine, stack.scheduler,
                                                  model_name=args.served_name or args.slm)
                solver = Solver(stack.executor, cfg)
                app = create_app(backend, fault=fault if fault.active else None, api_key=api_key, solver=solver,
                                 max_body_bytes=args.max_body_bytes)
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
    eng = Engine.from_pretrained(args.model, dtype=args.dtype, weights=args.weights, device=args.device,
                                 kv_memory_bytes=int(args.kv_memory_gb * (1 << 30)))
    _add_lora_modules(eng, args.lora_modules)
    backend = EngineCompletionBackend(eng, Scheduler(eng), model_name=args.served_name or args.model)
    sig = serve(backend, host=args.host, port=args.port, fault=fault if fault.active else None, api_key=api_key,
                graceful_shutdown_s=args.shutdown_grace, max_body_bytes=args.max_body_bytes)
    return _stopped(sig, eng.cache)


def _add_lora_modules(eng, items: list[str]) -> None:
    """``--lora-modules NAME=DIR ...``: each adapter unmerged on the SLM's resident model."""
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ValueError(f"--lora-modules {item!r}: want NAME=DIR")
        eng.add_adapter(name, path, model=eng.roles["slm"])


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


#: subcommand (cli_parser.build_parser's names) -> its function
COMMANDS = {"generate": cmd_generate, "solve": cmd_solve, "eval": cmd_eval, "train-prm": cmd_train_prm,
            "serve": cmd_serve, "trace": cmd_trace, "bench": cmd_bench, "models": cmd_models}


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if args.cmd in ("serve", "eval", "solve", "train-prm"):
        from gboost.malloc import tune_malloc
        tune_malloc()
    from gboost.llm.base import LLMError
    try:
        return COMMANDS[args.cmd](args)
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
