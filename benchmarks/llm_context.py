"""Where a resident general LLM's tokens go: context read against positions scored, per method.

    python benchmarks/llm_context.py --lines 266-269 --methods rsd_head gboost_head

Runs each method (a config `benchmarks/configs/gsm8k_<name>.toml`) on the questions, all in
flight at once in one process on one engine (the demo pair, the 1.5B value head as PRM), and
prints per method: LLM tokens computed, of them context (``llm_context_tokens``: tokens before
the rows the LLM was asked for), LLM-written steps on the chosen paths and their tokens, and the
answers (greedy methods must repeat them across engine versions). Lines 1001-1319 of GSM8K are refused.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.evals.datasets import load_lines, parse_lines
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gsm8k_suite import refuse_reserved

HERE = Path(__file__).resolve().parent


async def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared/data/gsm8k_test.jsonl"))
    ap.add_argument("--lines", default="266-269")
    ap.add_argument("--methods", nargs="+", default=["rsd_head", "gboost_head"])
    ap.add_argument("--prm", default="value-head:gsm8k-qwen2.5-coder-1.5b")
    ap.add_argument("--kv-memory-gb", type=float, default=3.0)
    args = ap.parse_args(argv)
    lines = parse_lines(args.lines)
    refuse_reserved(ap, args.data, lines, f"--lines {args.lines}")
    questions = [r.question for r in load_lines(args.data, lines)]
    cfgs = {m: SearchConfig.from_file(HERE / f"configs/gsm8k_{m}.toml") for m in args.methods}
    from gboost.stack import build_stack
    stack = await build_stack(cfgs[args.methods[0]], prm=args.prm, kv_memory_gb=args.kv_memory_gb)

    async def one(cfg):
        ex = EngineExecutor(stack.engine, stack.scheduler, cfg, llm=stack.llm, prm=stack.executor.prm,
                            options=CollabOptions())
        t0 = time.perf_counter()
        res = await asyncio.gather(*[solve(q, ex, cfg) for q in questions])
        return res, time.perf_counter() - t0

    try:
        outs = await asyncio.gather(*(one(c) for c in cfgs.values()))
    finally:
        await stack.aclose()
    for m, (res, wall) in zip(cfgs, outs):
        llm_steps = [(s, n) for r in res for s, n in zip(r.steps, r.chosen) if s["action"] != "slm"]
        print(json.dumps({"method": m, "llm_tokens": sum(r.cost.llm_tokens for r in res),
                          "llm_context_tokens": sum(r.cost.llm_context_tokens for r in res),
                          "llm_steps_chosen": len(llm_steps),
                          "their_tokens": sum(len(n.token_ids) for _, n in llm_steps),
                          "answers": [r.answer for r in res], "wall_s": round(wall)}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
