"""Markdown table of GSM8K runs from their per-question records (benchmarks/runs/*.jsonl).

    python benchmarks/gsm8k_table.py benchmarks/runs/gsm8k_{slm,llm,fusion,gboost}_100.jsonl

Works on a run still in progress (it reads the records written so far) and, with --common,
restricts every method to the questions all of them have finished, so rows stay comparable.
--paired adds the first run against each other one on the questions both finished: right only
with the first, right only with the other, and the exact two-sided McNemar p.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from pathlib import Path

from gboost.evals.loop import wilson_interval
from gboost.search.config import LLM_ACTIONS

COST = ("slm_tokens", "llm_tokens", "prm_tokens", "llm_calls")


def read(path: Path) -> dict[int, dict]:
    recs = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            r = json.loads(line)
            recs[r["idx"]] = r
    return recs


def auroc(recs: list[dict]) -> float | None:
    """P(score of a right solution > score of a wrong one): does the PRM's path score separate them?"""
    scored = [r for r in recs if r.get("score") is not None and r.get("cost", {}).get("prm_tokens", 1)]
    pos = [r["score"] for r in scored if r["correct"]]  # a run without a PRM (prm_tokens 0) has none
    neg = [r["score"] for r in scored if not r["correct"]]
    if not pos or not neg:
        return None
    wins = sum((p > q) + 0.5 * (p == q) for p in pos for q in neg)
    return wins / (len(pos) * len(neg))


def row(name: str, recs: list[dict]) -> str:
    n = len(recs)
    ok = sum(bool(r["correct"]) for r in recs)
    lo, hi = wilson_interval(ok, n)
    tot = {k: sum(r["cost"][k] for r in recs) for k in COST}
    steps = [s for r in recs for s in r["steps"]]
    helped = sum(s["action"] in LLM_ACTIONS for s in steps)
    walls = [r["wall_s"] for r in recs if r.get("wall_s") is not None]
    wall = f"{statistics.median(walls) / 60:.1f}" if walls else "—"
    errors = sum(r.get("error") is not None for r in recs)
    auc = auroc(recs)
    # records before the split was measured lack the field
    ctx = [r["cost"]["llm_context_tokens"] for r in recs if "llm_context_tokens" in r["cost"]]
    ctx_share = f"{sum(ctx) / tot['llm_tokens']:.2f}" if len(ctx) == n and tot["llm_tokens"] else "—"
    return (f"| {name} | {ok} / {n} | {ok / n:.2f} ({lo:.2f}–{hi:.2f}) | {tot['slm_tokens']} | "
            f"{tot['llm_tokens']} | {tot['llm_tokens'] / n:.0f} | {ctx_share} | {tot['prm_tokens'] / n:.0f} | {tot['llm_calls']} | "
            f"{helped} of {len(steps)} | {'—' if auc is None else f'{auc:.2f}'} | {wall} | {errors} |")


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p for b and c discordant pairs (binomial, p = 1/2)."""
    n = b + c
    return min(1.0, 2 * sum(math.comb(n, j) for j in range(min(b, c) + 1)) / 2 ** n) if n else 1.0


def paired(first: dict[int, dict], other: dict[int, dict]) -> tuple[int, int, int, float]:
    """(shared questions, right only in first, right only in other, McNemar p)."""
    both = set(first) & set(other)
    b = sum(bool(first[i]["correct"]) and not other[i]["correct"] for i in both)
    c = sum(bool(other[i]["correct"]) and not first[i]["correct"] for i in both)
    return len(both), b, c, mcnemar_p(b, c)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--common", action="store_true", help="only questions every run has finished")
    ap.add_argument("--paired", action="store_true", help="the first run against each other one, paired")
    args = ap.parse_args(argv)
    runs = {p.stem: read(p) for p in args.runs}
    keep = set.intersection(*(set(r) for r in runs.values())) if args.common else None
    print("| run | correct | accuracy (95% Wilson CI) | SLM tokens | LLM tokens | LLM tokens / question | of them context read | "
          "PRM tokens / question | LLM-involving steps | LLM-helped steps on the chosen paths | "
          "PRM AUROC right vs wrong | median wall min / question (concurrent) | errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, recs in runs.items():
        chosen = [recs[i] for i in sorted(recs) if keep is None or i in keep]
        if chosen:
            print(row(name, chosen))
    if keep is not None:
        print(f"\n(common questions: {len(keep)})", file=sys.stderr)
    if args.paired:
        (first, a), *others = runs.items()
        print(f"\n| {first} against | shared | right only in {first} | right only in the other | McNemar p |")
        print("|---|---|---|---|---|")
        for name, recs in others:
            n, b, c, p = paired(a, recs)
            print(f"| {name} | {n} | {b} | {c} | {p:.2g} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
