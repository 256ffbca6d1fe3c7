"""Concurrent G-Boost searches on a KV pool too small for all of them: preemption vs fail-fast.

    python benchmarks/kv_pressure.py                 # pools 4000 2000 1200 600 300 200 blocks
    python benchmarks/kv_pressure.py --blocks 600 --requests 12
    python benchmarks/kv_pressure.py --demo --kv-gb 2 0.05 --requests 6   # the demo pair, GSM8K (minutes)
    # the same workload on a checkout from before preemption (673ba80), for the baseline:
    git worktree add /tmp/before 673ba80 && (cd /tmp/before && PYTHONPATH=. python /path/to/benchmarks/kv_pressure.py)

Twelve gboost requests (tiny random SLM, LLM and judge PRM on one pool, block size 16) share a
330-token preamble and run at once. For each pool size both scheduler modes run in this process:
`preempt` (idle sequences, then newer waiting ones, give back their unshared tail blocks and are
recomputed later) and `fail-fast` (`Scheduler(preempt=False)`: the oldest work that cannot fit
fails alone). Reported: requests completed, preemptions, tokens dropped by them, tokens every
model computed, wall time. The scheduling does not depend on the weights, only on how long the
steps are, so tiny models show it in seconds; the forward thread makes batch composition depend
on timing, so token counts vary a little from run to run.
"""
import argparse
import asyncio
import time

from gboost.llm.local import LocalLLM
from gboost.scheduler import Scheduler
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.prm.scorer import PRMScorer, PRMSpec
from gboost.testing import tiny_engine

PREAMBLE = "You are a careful solver. " * 12


def run(num_blocks: int, requests: int, preempt: bool) -> dict:
    eng = tiny_engine({"slm": 1, "llm": 2, "prm": 2}, num_blocks=num_blocks)
    try:
        sched = Scheduler(eng, preempt=preempt)
    except TypeError:  # a checkout from before preemption (see RESULTS.md for that baseline)
        sched, preempt = Scheduler(eng), None
    cfg = SearchConfig(method="gboost", max_step_tokens=24, max_depth=4, num_simulations=6,
                       temperature=0.8, top_p=1.0, seed=0)
    be = EngineExecutor(eng, sched, cfg, llm=LocalLLM(eng, sched),
                       prm=PRMScorer(eng, sched, PRMSpec(kind="judge", yes_token="Y")),
                       options=CollabOptions(collab_mode="speculative", max_draft=4))

    async def main():
        qs = [PREAMBLE + f"Question {i}: {i}+{3 * i}?" for i in range(requests)]
        return await asyncio.gather(*(solve(q, be, cfg) for q in qs), return_exceptions=True)

    t0 = time.perf_counter()
    res = asyncio.run(main())
    wall = time.perf_counter() - t0
    eng.cache.check_refcounts()
    assert not eng.cache.live, "a request leaked KV blocks"
    mode = {True: "preempt", False: "fail-fast", None: "before preemption"}[preempt]
    return {"blocks": num_blocks, "mode": mode,
            "done": sum(not isinstance(r, BaseException) for r in res), "requests": requests,
            "preemptions": getattr(sched, "preemptions", 0), "dropped": getattr(sched, "preempted_tokens", 0),
            "computed": sum(m.runner.tokens_computed for m in eng.models.values()), "wall": wall}


def run_demo(kv_gb: float, requests: int) -> dict:
    """The demo pair (0.5B SLM, 1.5B LLM and judge PRM, bf16) on the first GSM8K questions."""
    import json
    from pathlib import Path

    from gboost.stack import build_stack
    data = Path(__file__).resolve().parents[2] / "shared" / "data" / "gsm8k_test.jsonl"
    qs = [json.loads(line)["question"] for line in data.open()][:requests]
    cfg = SearchConfig(method="gboost", num_simulations=3, max_depth=4, max_step_tokens=48, seed=0)

    async def main():
        st = await build_stack(cfg, kv_memory_gb=kv_gb)
        t0 = time.perf_counter()
        res = await asyncio.gather(*(solve(q, st.executor, cfg) for q in qs), return_exceptions=True)
        wall = time.perf_counter() - t0
        st.engine.cache.check_refcounts()
        assert not st.engine.cache.live, "a request leaked KV blocks"
        stats = getattr(st.scheduler, "kv_stats", lambda: {"blocks_total": st.engine.cache.blocks.num_blocks,
                                                            "preemptions": 0, "preempted_tokens": 0})()
        computed = sum(m.runner.tokens_computed for m in st.engine.models.values())
        await st.aclose()
        return {"blocks": stats["blocks_total"], "mode": f"demo, {kv_gb} GB",
                "done": sum(not isinstance(r, BaseException) for r in res), "requests": requests,
                "preemptions": stats["preemptions"], "dropped": stats["preempted_tokens"],
                "computed": computed, "wall": wall}
    return asyncio.run(main())


def print_row(r: dict) -> None:
    print(f"| {r['blocks']} | {r['mode']} | {r['done']}/{r['requests']} | {r['preemptions']} | "
          f"{r['dropped']:,} | {r['computed']:,} | {r['wall']:.1f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--blocks", type=int, nargs="+", default=[4000, 2000, 1200, 600, 300, 200])
    ap.add_argument("--requests", type=int, default=12)
    ap.add_argument("--demo", action="store_true", help="the demo models instead of tiny ones")
    ap.add_argument("--kv-gb", type=float, nargs="+", default=[2.0, 0.05], help="--demo pool sizes")
    args = ap.parse_args()
    print("| pool blocks | scheduler | completed | preemptions | tokens dropped | tokens computed | wall s |")
    print("|---|---|---|---|---|---|---|")
    if args.demo:
        for gb in args.kv_gb:
            print_row(run_demo(gb, args.requests))
        return
    for nb in args.blocks:
        for preempt in (True, False):
            r = run(nb, args.requests, preempt)
            print_row(r)
            if r["mode"] == "before preemption":
                break  # that checkout has one mode


if __name__ == "__main__":
    main()
