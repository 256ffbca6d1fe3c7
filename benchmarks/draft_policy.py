"""LLM work of speculative LLM-involving steps under each draft policy, on the demo pair.

    python benchmarks/draft_policy.py --lines 266-273 --depth 3 [--tiny]

For each policy (fixed 16, fixed 4, adaptive up to 16) and each action (`llm`, greedy, as the llm
and rsd baselines write; `collab`, fused at T 0.7, as G-Boost writes) it runs a chain of `--depth`
steps on every question, all questions in flight at once, in one process on one engine, and
prints the LLM tokens computed per token written, LLM calls, draft acceptance and wall time. Greedy
`llm` steps are the LLM's own greedy continuation under every policy in exact arithmetic; in bf16 the
LLM's rows depend on how many positions a call computes, so near-ties can flip (the script says
whether the texts agree). The first policy of the first action also pays the prompts' prefill,
which the prefix cache then serves to the others. Lines 1001-1319 of GSM8K are refused.
"""
from __future__ import annotations

import argparse
import asyncio
import sys
import time

from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.evals.datasets import load_lines, parse_lines
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gsm8k_suite import refuse_reserved

POLICIES = (("fixed 16", CollabOptions(max_draft=16)), ("fixed 4", CollabOptions(max_draft=4)),
            ("adaptive <= 16", CollabOptions(max_draft=16, draft_policy="adaptive")))
ACTIONS = (("llm, greedy", dict(method="llm", temperature=0.0, top_p=1.0)),
           ("collab, T 0.7", dict(method="fusion", temperature=0.7, top_p=0.95)))


async def run(stack, questions: list[str], depth: int) -> None:
    print("| steps | draft policy | LLM tokens | tokens written | LLM tokens / token written | LLM calls | "
          "drafts accepted | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for act_name, kw in ACTIONS:
        texts = {}
        for pol_name, opt in POLICIES:
            cfg = SearchConfig(max_depth=depth, max_step_tokens=192, score_baselines=False, seed=0, **kw)
            ex = EngineExecutor(stack.engine, stack.scheduler, cfg, llm=stack.llm, options=opt)
            t0 = time.perf_counter()
            results = await asyncio.gather(*[solve(q, ex, cfg) for q in questions])
            wall = time.perf_counter() - t0
            llm_tokens = sum(r.cost.llm_tokens for r in results)
            written = sum(len(n.token_ids) for r in results for n in r.chosen)
            c = ex.counts
            texts[pol_name] = [r.text for r in results]
            print(f"| {act_name} | {pol_name} | {llm_tokens} | {written} | {llm_tokens / max(written, 1):.2f} | "
                  f"{c.llm_rounds} | {c.draft_accepted}/{c.draft_proposed} | {wall:.1f} |", flush=True)
        if kw["temperature"] == 0.0:
            same = all(t == texts[POLICIES[0][0]] for t in texts.values())
            print(f"\n({act_name}: the same text under every policy: {'yes' if same else 'NO'})\n", flush=True)


async def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data/gsm8k_test.jsonl")
    ap.add_argument("--lines", default="266-273")
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--tiny", action="store_true", help="tiny random models (checks the script, measures nothing)")
    args = ap.parse_args(argv)
    lines = parse_lines(args.lines)
    refuse_reserved(ap, args.data, lines, f"--lines {args.lines}")
    questions = [r.question for r in load_lines(args.data, lines)]
    if args.tiny:
        from gboost.testing import tiny_stack
        stack = tiny_stack()
    else:
        from gboost.stack import build_stack
        stack = await build_stack(SearchConfig(method="llm"), prm="none", kv_memory_gb=3.0)
    try:
        await run(stack, questions, args.depth)
    finally:
        await stack.aclose()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
