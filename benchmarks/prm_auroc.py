"""Path-score AUROC, right against wrong solutions, of value heads (and optionally the judge) on the
solutions of finished GSM8K runs (benchmarks/runs/*.jsonl: lines 1-100 of the test set).

    python benchmarks/prm_auroc.py benchmarks/runs/gsm8k_{slm,fusion}_100.jsonl \
        --head runs/head-slm --head runs/head-llm [--judge] [--out scores.jsonl]

`--judge-from-records` takes, for runs whose steps carry the search's own PRM rewards (gboost
records: the 1.5B judge's P("Yes") of every chosen step), those rewards as a signal at no compute;
solutions of runs without them are left out of that signal's row (its n says how many).

Run records keep step texts, not token ids, so every head reads its `text` layout here (the SLM's
prompt, then each step and the delimiter): for a head on the SLM's own rows that is the tokens
the SLM would have written, up to BPE merges across a step boundary, and its final step ends on
the SLM's end-of-turn token (as its rollouts' final steps do) rather than the delimiter. Path scores: the steps'
scores aggregated by `last`, `min` and `mean`, as `prm_aggregation` does in the search.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

from gboost.engine import Engine
from gboost.prm.value_head import load_head
from gboost.prm_train.features import extract, text_solution
from gboost.prm_train.pipeline import path_auroc
from gboost.prm.value_scorer import feature_role

DEMO_SLM, DEMO_LLM = "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"


def load_solutions(paths: list[Path], limit: int | None) -> list[dict]:
    out = []
    for p in paths:
        recs = [json.loads(x) for x in p.read_text().splitlines() if x.strip()]
        recs = [r for r in recs if r.get("steps") and r.get("error") is None][:limit]
        out += [{"run": p.stem, "idx": r["idx"], "question": r["question"], "correct": bool(r["correct"]),
                 "steps": [{"text": s["text"]} for s in r["steps"]],
                 "rewards": [s.get("reward") for s in r["steps"]]} for r in recs]
    return out


def recorded_rewards(sols: list[dict]) -> list[list[float] | None]:
    """The PRM rewards the search itself gave each step; None for a solution with any step unscored."""
    return [None if any(x is None for x in s["rewards"]) else [float(x) for x in s["rewards"]] for s in sols]


def hanley_mcneil(a: float, n_pos: int, n_neg: int) -> tuple[float, float]:
    """95% interval of an AUROC from its value and the class counts (Hanley & McNeil 1982)."""
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    se = math.sqrt((a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg))
    return max(0.0, a - 1.96 * se), min(1.0, a + 1.96 * se)


def table(signals: dict[str, list[list[float] | None]], sols: list[dict]) -> list[str]:
    """Markdown rows: per signal, n (right), and last/min/mean path AUROC with 95% intervals, over the
    solutions that signal scored."""
    out = ["| signal | n (right) | last | min | mean |", "|---|---|---|---|---|"]
    for name, v in signals.items():
        keep = [i for i, x in enumerate(v) if x]
        correct = [sols[i]["correct"] for i in keep]
        pos = sum(correct)
        cells = []
        for how in ("last", "min", "mean"):
            if 0 < pos < len(keep):
                a = path_auroc([v[i] for i in keep], correct, how)
                lo, hi = hanley_mcneil(a, pos, len(keep) - pos)
                cells.append(f"{a:.2f} ({lo:.2f}-{hi:.2f})")
            else:
                cells.append("n/a")
        out.append(f"| {name} | {len(keep)} ({pos}) | " + " | ".join(cells) + " |")
    return out


def final_token(m, card, final_at: str) -> int | None:
    """The token a record's final step ends on: the SLM's end-of-turn for a head on its own rows
    (as in its rollouts and in a search), unless `final_at` is "delimiter" (the text layout)."""
    return m.eos_token_ids[0] if card.sequence == "slm" and final_at == "eot" else None


def head_scores(eng, head_dir: str, sols: list[dict], final_at: str = "eot") -> list[list[float]]:
    head, card = load_head(head_dir)
    m = eng.role(feature_role(eng, card))
    eos = final_token(m, card, final_at)
    feats = extract(m, eng.cache, [text_solution(m.tokenizer, s, eos) for s in sols], [card.layer], progress=True)
    return [[float(x) for x in head.score(r)] for r in feats[card.layer]]


def judge_scores(eng, sols: list[dict]) -> list[list[float]]:
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from prm_signal import judge_rows  # noqa: E402
    from gboost.prm.scorer import PRMScorer
    scorer = PRMScorer(eng, None, role="llm")
    return [[y for y, _ in judge_rows(eng, scorer, s["question"], [t["text"] for t in s["steps"]])] for s in sols]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--head", action="append", default=[], help="value-head directory (repeatable)")
    ap.add_argument("--judge", action="store_true", help="also the 1.5B judge's P('Yes') (slow)")
    ap.add_argument("--judge-from-records", action="store_true",
                    help="also the PRM rewards stored in the records (gboost runs), no compute")
    ap.add_argument("--by-run", action="store_true", help="also a table per run file")
    ap.add_argument("--final-step-at", choices=["eot", "delimiter"], default="eot",
                    help="where a head on the SLM's rows reads each final step: its end-of-turn token "
                         "(as a search does) or the step delimiter")
    ap.add_argument("--limit", type=int, default=None, help="solutions per run file")
    ap.add_argument("--out", type=Path, default=None, help="per-solution step scores (JSONL)")
    args = ap.parse_args(argv)
    sols = load_solutions(args.runs, args.limit)
    signals: dict[str, list[list[float] | None]] = {}
    if args.judge_from_records:
        signals["judge (search's rewards)"] = recorded_rewards(sols)
    # the 1.5B loads only when a signal reads it (a head on its rows, or the judge)
    need_llm = args.judge or any(load_head(d)[1].base_model != DEMO_SLM for d in args.head)
    eng = (Engine.from_pretrained(DEMO_SLM, DEMO_LLM if need_llm else None, kv_memory_bytes=1 << 30)
           if args.head or args.judge else None)
    for d in args.head:
        t0 = time.perf_counter()
        signals[f"head:{d}"] = head_scores(eng, d, sols, args.final_step_at)
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
    print("\n".join(table(signals, sols)))
    if args.by_run:
        for run in dict.fromkeys(s["run"] for s in sols):
            idx = [i for i, s in enumerate(sols) if s["run"] == run]
            print(f"\n{run}:")
            print("\n".join(table({k: [v[i] for i in idx] for k, v in signals.items()}, [sols[i] for i in idx])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
