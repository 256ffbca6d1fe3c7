"""Does a step scorer tell right solutions from wrong ones?  AUROC of candidate PRM signals on the
solutions of finished GSM8K runs (benchmarks/runs/*.jsonl), all computed by the 1.5B demo model.

    python benchmarks/prm_signal.py benchmarks/runs/gsm8k_slm_100.jsonl --limit 60

Signals, per step, then aggregated over the solution's steps (min and mean):
  judge       P("Yes") after the judge question -- what the search uses (engine/prm/scorer.py)
  judge_yn    P("Yes") / (P("Yes") + P("No")): the judge restricted to its two answers
  llm_lik     exp(mean log-prob of the step's tokens) under the 1.5B, in the SLM's own prompt:
              how much the general model agrees with the step
AUROC = P(score of a right solution > score of a wrong one); 0.5 is chance.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from gboost.engine import Engine
from gboost.collab.rules import SLM_SYSTEM
from gboost.prm.scorer import PRMScorer, single_token

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gsm8k_table import auroc  # noqa: E402


def judge_rows(eng, scorer, question: str, steps: list[str]) -> list[tuple[float, float]]:
    """(P(Yes), P(No)) after each step, on append-only judge sequences (prefix cache reuse)."""
    m, out = scorer.model, []
    no_id = single_token(m.tokenizer, "No", "no-token")
    ids = scorer.root_ids(question)
    for k, step in enumerate(steps):
        ids = ids + scorer.step_ids(step, first=k == 0)
        seq = eng.cache.new_sequence(m.key, ids + scorer._suffix)
        try:
            logits = m.runner.run([seq], "last")[0].float()
        finally:
            eng.cache.free(seq)
        p = torch.softmax(logits, -1)
        out.append((float(p[scorer.yes_id]), float(p[no_id])))
    return out


def step_likelihoods(eng, role: str, question: str, steps: list[str]) -> list[float]:
    m = eng.role(role)
    tok = m.tokenizer
    ids = tok.encode_chat([{"role": "system", "content": SLM_SYSTEM}, {"role": "user", "content": question}])
    spans = []
    for k, step in enumerate(steps):
        new = tok.encode(("" if k == 0 else "\n\n") + step)
        spans.append((len(ids), len(ids) + len(new)))
        ids = ids + new
    seq = eng.cache.new_sequence(m.key, ids)
    start = seq.num_computed
    try:
        logits = m.runner.run([seq], "all")[0].float()   # rows for positions start .. len-1
    finally:
        eng.cache.free(seq)
    logp = torch.log_softmax(logits, -1)
    out = []
    for a, b in spans:
        # token t is predicted by the row of position t-1
        lp = [float(logp[t - 1 - start, ids[t]]) for t in range(max(a, start + 1), b)]
        out.append(float(torch.tensor(lp).mean().exp()) if lp else 1.0)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--limit", type=int, default=None, help="solutions per run file")
    ap.add_argument("--model", default="qwen2.5-coder-1.5b")
    ap.add_argument("--out", type=Path, default=None, help="per-solution scores (JSONL)")
    args = ap.parse_args(argv)
    eng = Engine.from_pretrained(args.model, args.model, args.model, kv_memory_bytes=1 << 29)
    scorer = PRMScorer(eng, None)
    table = []
    sink = args.out.open("w") if args.out else None
    for path in args.runs:
        recs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        recs = [r for r in recs if r.get("steps") and r.get("error") is None][: args.limit]
        scored, t0 = [], time.perf_counter()
        for r in recs:
            steps = [s["text"] for s in r["steps"]]
            yn = judge_rows(eng, scorer, r["question"], steps)
            lik = step_likelihoods(eng, "llm", r["question"], steps)
            sig = {"judge": [y for y, _ in yn], "judge_yn": [y / max(y + n, 1e-12) for y, n in yn], "llm_lik": lik}
            row = {"idx": r["idx"], "correct": bool(r["correct"]), "signals": sig}
            scored.append(row)
            if sink:
                sink.write(json.dumps(row) + "\n")
        dt = time.perf_counter() - t0
        for name in ("judge", "judge_yn", "llm_lik"):
            for agg in ("min", "mean", "last"):
                f = {"min": min, "mean": lambda v: sum(v) / len(v), "last": lambda v: v[-1]}[agg]
                auc = auroc([{"correct": s["correct"], "score": f(s["signals"][name])} for s in scored])
                table.append((path.stem, name, agg, auc, len(scored), sum(s["correct"] for s in scored)))
        print(f"{path.stem}: {len(scored)} solutions in {dt:.0f} s", file=sys.stderr)
    print("| run | signal | aggregation | AUROC right vs wrong | solutions (right) |")
    print("|---|---|---|---|---|")
    for run, name, agg, auc, n, ok in table:
        print(f"| {run} | {name} | {agg} | {'—' if auc is None else f'{auc:.2f}'} | {n} ({ok}) |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
