"""GSM8K accuracy and cost of several methods in ONE process on ONE engine (CPU-friendly).

    python benchmarks/gsm8k_suite.py --limit 100 --methods slm llm fusion gboost

Each method gets its own EngineExecutor (its own sampling config) over the same engine,
scheduler, local LLM and PRM, so the requests of all methods share forward batches: on a
2-core CPU a decode step of the 1.5B costs 0.20 s at batch 1 and 0.57 s at batch 32, so
one mixed run finishes far sooner than the methods one after another.

Per-request costs (what RESULTS.md reports) are measured per request and are exact; the
backend-wide counters and the per-method wall times are shared by all methods here, so the
summaries drop ``backend_cost`` and the suite's total wall time is written once.
Records go to benchmarks/runs/gsm8k_<method>_<N>.jsonl as they finish (so a run cut short
still leaves graded records), summaries to *.summary.json. On a machine too slow for all N
in one sitting, `--admit-for S` stops starting questions after S seconds and `--resume`
later continues from the records (refused if the config changed).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

from gboost.evals.datasets import load_lines, parse_lines
from gboost.malloc import tune_malloc
from gboost.evals.loop import run_eval
from gboost.evals.slots import PrioritySlots
from gboost.collab.executor import CollabOptions, EngineExecutor
from gboost.search.config import SearchConfig
from gboost.prm.value_scorer import ValueHeadScorer
from gboost.stack import VALUE_HEAD, build_stack

HERE = Path(__file__).resolve().parent
# a name here is a method of its own in the suite (records gsm8k_<name>_<N>.jsonl); a variant's
# file sets which engine method it runs
CONFIGS = {"gboost": HERE / "configs/gsm8k_gboost.toml",
           "gboost_last": HERE / "configs/gsm8k_gboost_last.toml"}
CHAIN = HERE / "configs/gsm8k_chain.toml"
# ~38 requests in flight: larger batches per forward, while KV (7 GB) and activations stay within
# 24 GiB (64 in flight with an 8 GB pool reached 22.8 GB RSS and was OOM-killed).  In a shared
# batch a question costs about its number of sequential forward ticks, not its solo wall time:
# the 2026-11-29 run finished, per slot and 30 min, slm 2.2, llm 1.2, fusion 1.7, gboost 1.3
# questions; slots in inverse proportion let the methods finish together
CONCURRENCY = {"slm": 6, "llm": 12, "fusion": 9, "gboost": 11}


# the GSM8K test lines this project never runs anything on (kept for a final, untouched report)
RESERVED = (1001, 1319)


def touches_reserved(data: str, lines: tuple[int, int] | None) -> bool:
    """Whether a 1-based line range of ``data`` reaches the reserved GSM8K lines."""
    return bool(lines) and "gsm8k" in Path(data).name and lines[1] >= RESERVED[0]


def refuse_reserved(ap: argparse.ArgumentParser, data: str, lines: tuple[int, int], flag: str) -> None:
    """Exit with a usage error (``flag`` names the option that chose the lines) if they are reserved."""
    if touches_reserved(data, lines):
        ap.error(f"{flag}: GSM8K lines {RESERVED[0]}-{RESERVED[1]} are reserved")


def config_for(method: str, seed: int, configs: dict[str, Path] = CONFIGS) -> SearchConfig:
    cfg = SearchConfig.from_file(configs.get(method, CHAIN))
    if method not in configs:
        cfg.method = method
    cfg.seed = seed
    cfg.validate()
    return cfg


async def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(HERE.parent.parent / "shared/data/gsm8k_test.jsonl"))
    ap.add_argument("--limit", type=int, default=100)
    ap.add_argument("--lines", default=None, metavar="FIRST-LAST",
                    help="1-based inclusive line range of --data instead of --limit (dev: 201-1000)")
    ap.add_argument("--config", nargs="+", default=[], metavar="NAME=FILE",
                    help="a method of its own named NAME, run with the SearchConfig FILE (its "
                         "`method` says which engine method), e.g. gboost_mean=my.toml")
    ap.add_argument("--methods", nargs="+", default=["slm", "llm", "fusion", "gboost"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--kv-memory-gb", type=float, default=7.0)
    ap.add_argument("--max-draft", type=int, default=16, metavar="K",
                    help="SLM tokens drafted per LLM call in speculative LLM-involving steps (at most, if adaptive)")
    ap.add_argument("--draft-policy", default="fixed", choices=["fixed", "adaptive"])
    ap.add_argument("--prm", default=None, metavar="value-head:DIR",
                    help="the PRM of every method (default: the 1.5B judge); with --tag, e.g. _head, "
                         "its records do not overwrite the judge's")
    ap.add_argument("--prm-of", nargs="+", default=[], metavar="METHOD=value-head:DIR",
                    help="another value head for one method (same resident models), e.g. to compare "
                         "a head on the SLM's rows with one on the LLM's in one shared batch")
    ap.add_argument("--slm-adapter", default=None, metavar="DIR",
                    help="a peft LoRA adapter for the SLM: the private SLM (merged, or unmerged with --base)")
    ap.add_argument("--base", default=None, help="the SLM's untuned base (fusion_rule 'proxy'): the demo SLM's "
                                                 "name runs base and tuned rows on one resident copy")
    ap.add_argument("--weights", default="bf16", choices=["bf16", "int8", "int4"])
    ap.add_argument("--out-dir", default=str(HERE / "runs"))
    ap.add_argument("--tag", default="", help="suffix of the output names")
    ap.add_argument("--resume", action="store_true",
                    help="keep the records already written (same config) and solve only the rest")
    ap.add_argument("--slots", nargs="+", default=[], metavar="METHOD=N",
                    help="requests in flight per method, overriding CONCURRENCY (e.g. a resumed run "
                         "that finishes only some methods can give them all the slots)")
    ap.add_argument("--pool", type=int, default=None, metavar="N",
                    help="at most N requests in flight over all methods (each still capped by its slots)")
    ap.add_argument("--priority", nargs="+", default=[], metavar="METHOD=P",
                    help="with --pool: a freed slot goes to the lowest P first (default 0), e.g. "
                         "gboost_last=1 runs a variant on the slots the main methods leave")
    ap.add_argument("--admit-for", type=float, default=None, metavar="S",
                    help="start no new question after S seconds; the ones in flight finish "
                         "(time-boxed sessions: resume later with --resume)")
    args = ap.parse_args(argv)
    tune_malloc()

    slots = dict(CONCURRENCY)
    for item in args.slots:
        m, _, n = item.partition("=")
        if m not in args.methods or not n.isdigit() or int(n) < 1:
            ap.error(f"--slots {item!r}: want METHOD=N with METHOD in --methods and N >= 1")
        slots[m] = int(n)
    prio = {m: 0 for m in args.methods}
    for item in args.priority:
        m, _, p = item.partition("=")
        if m not in args.methods or not p.lstrip("-").isdigit():
            ap.error(f"--priority {item!r}: want METHOD=P with METHOD in --methods and P an integer")
        prio[m] = int(p)
    if args.pool is not None and args.pool < 1:
        ap.error("--pool must be >= 1")
    pool = PrioritySlots(args.pool) if args.pool is not None else None
    configs = dict(CONFIGS)
    for item in args.config:
        m, _, f = item.partition("=")
        if not m or not f:
            ap.error(f"--config {item!r}: want NAME=FILE")
        configs[m] = Path(f)
    lines = parse_lines(args.lines)
    refuse_reserved(ap, args.data, lines or (1, args.limit),
                    f"--lines {args.lines}" if lines else f"--limit {args.limit}")
    rows = load_lines(args.data, lines, None if lines else args.limit)
    span = f"{lines[0]}-{lines[1]}" if lines else f"{len(rows)}"
    cfgs = {m: config_for(m, args.seed, configs) for m in args.methods}
    heads = {}  # checked before any model loads
    for item in args.prm_of:
        m, _, spec = item.partition("=")
        if m not in args.methods or not spec.startswith(VALUE_HEAD):
            ap.error(f"--prm-of {item!r}: want METHOD=value-head:DIR with METHOD in --methods")
        heads[m] = spec[len(VALUE_HEAD):]
    t0 = time.perf_counter()
    if args.max_draft < 1:
        ap.error(f"--max-draft must be >= 1, got {args.max_draft}")
    stack = await build_stack(cfgs[args.methods[0]], kv_memory_gb=args.kv_memory_gb, prm=args.prm,
                              slm_adapter=args.slm_adapter, base=args.base, weights=args.weights,
                              options=CollabOptions(max_draft=args.max_draft, draft_policy=args.draft_policy))
    print(f"models loaded in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    base = stack.executor
    prms = {m: base.prm if m not in heads else ValueHeadScorer(stack.engine, stack.scheduler, heads[m])
            for m in args.methods}
    backends = {m: EngineExecutor(stack.engine, stack.scheduler, cfgs[m], llm=base.llm, prm=prms[m],
                                 base=base.base, options=base.opt) for m in args.methods}
    done = {m: [0, 0] for m in args.methods}

    def progress(m):
        def on_record(rec):
            done[m][0] += 1
            done[m][1] += bool(rec["correct"])
            line = "  ".join(f"{k} {c}/{n}" for k, (n, c) in done.items())
            print(f"[{time.perf_counter() - t0:7.0f} s] {line}", file=sys.stderr, flush=True)
        return on_record

    out = Path(args.out_dir)
    name = {m: out / f"gsm8k_{m}_{span}{args.tag}.jsonl" for m in args.methods}
    t1 = time.perf_counter()
    admit = None if args.admit_for is None else (lambda: time.perf_counter() - t1 < args.admit_for)
    try:
        reports = await asyncio.gather(*(
            run_eval(rows, backends[m], cfgs[m], out_path=name[m], concurrency=slots.get(m, 8),
                     progress=False, on_record=progress(m), resume=args.resume, admit=admit,
                     slot=None if pool is None else (lambda p=prio[m]: pool.take(p)))
            for m in args.methods))
    finally:
        await stack.aclose()
    wall = time.perf_counter() - t1
    for m, rep in zip(args.methods, reports):
        d = rep.to_dict()
        d.pop("records", None)
        d["backend_cost"] = None   # shared by every method in this process: not attributable
        d["suite"] = {"methods": args.methods, "wall_s": round(wall, 1),
                      "lines": args.lines, "config": str(configs.get(m, CHAIN)),
                      "concurrency": slots.get(m, 8), "pool": args.pool, "priority": prio[m],
                      "prm": VALUE_HEAD + heads[m] if m in heads else args.prm,
                      "argv": sys.argv[1:]}
        name[m].with_name(name[m].stem + ".summary.json").write_text(json.dumps(d, indent=1))
        print(json.dumps({"method": m, "n": d["n"], "accuracy": d["accuracy"], "ci95": d["ci95"],
                          "llm_tokens": d["cost"]["llm_tokens"]}))
    print(f"suite wall {wall:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
