"""Path-score AUROC, right against wrong solutions, of value heads (and optionally the judge) on the
solutions of finished GSM8K runs (benchmarks/runs/*.jsonl: lines 1-100 of the test set).

    python benchmarks/prm_auroc.py benchmarks/runs/gsm8k_{slm,fusion}_100.jsonl \
        --head runs/head-slm --head runs/head-llm [--judge] [--out scores.jsonl]

Run records keep step texts, not token ids, so every head reads its `text` layout here (the SLM's
prompt, then each step and the delimiter): for a head on the SLM's own rows that is the tokens
the SLM would have written, up to BPE merges across a step boundary. Path scores: the steps'
scores aggregated by `last`, `min` and `mean`, as `prm_aggregation` does in the search.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from engine.engine import Engine
from engine.models.value_head import load_head
from engine.prm_train.features import extract, text_solution
from engine.prm_train.pipeline import path_auroc
from engine.collab.value_prm import feature_role

DEMO_SLM, DEMO_LLM = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


def load_solutions(paths: list[Path], limit: int | None) -> list[dict]:
    out = []
    for p in paths:
        recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        recs = [r for r in recs if r.get("steps") and r.get("error") is None][:limit]
        out += [{"run": p.stem, "idx": r["idx"], "question": r["question"], "correct": bool(r["correct"]),
                 "steps": [{"text": s["text"]} for s in r["steps"]]} for r in recs]
    return out


def head_scores(eng, head_dir: str, sols: list[dict]) -> list[list[float]]:
    head, card = load_head(head_dir)
    m = eng.role(feature_role(eng, card))
    feats = extract(m, eng.cache, [text_solution(m.tokenizer, s) for s in sols], [card.layer], progress=True)
    return [[float(x) for x in head.score(r)] for r in feats[card.layer]]


def judge_scores(eng, sols: list[dict]) -> list[list[float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prm_signal import judge_rows  # noqa: E402
    from engine.collab.prm import PRMScorer
    scorer = PRMScorer(eng, None, role="llm")
    return [[y for y, _ in judge_rows(eng, scorer, s["question"], [t["text"] for t in s["steps"]])] for s in sols]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--head", action="append", default=[], help="value-head directory (repeatable)")
    ap.add_argument("--judge", action="store_true", help="also the 1.5B judge's P('Yes') (slow)")
    ap.add_argument("--limit", type=int, default=None, help="solutions per run file")
    ap.add_argument("--out", type=Path, default=None, help="per-solution step scores (JSONL)")
    args = ap.parse_args(argv)
    sols = load_solutions(args.runs, args.limit)
    eng = Engine.from_pretrained(DEMO_SLM, DEMO_LLM, kv_memory_bytes=1 << 30)
    signals: dict[str, list[list[float]]] = {}
    for d in args.head:
        t0 = time.perf_counter()
        signals[f"head:{d}"] = head_scores(eng, d, sols)
        print(f"{d}: {len(sols)} solutions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.judge:
        t0 = time.perf_counter()
        signals["judge"] = judge_scores(eng, sols)
        print(f"judge: {len(sols)} solutions in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    if args.out:
        with args.out.open("w") as f:
            for i, s in enumerate(sols):
                f.write(json.dumps({**s, "scores": {k: v[i] for k, v in signals.items()}}) + "\n")
    correct = [s["correct"] for s in sols]
    print(f"{len(sols)} solutions ({sum(correct)} right) from {', '.join(p.stem for p in args.runs)}")
    print("| signal | last | min | mean |")
    print("|---|---|---|---|")
    for name, v in signals.items():
        print(f"| {name} | " + " | ".join(f"{path_auroc(v, correct, how):.3f}" for how in ("last", "min", "mean")) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
