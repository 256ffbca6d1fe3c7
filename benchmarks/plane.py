"""The accuracy-cost plane: accuracy (95% Wilson interval) against LLM tokens per question (what
the LLM computed, as the LLM budgets count it), one line per method, from suite records (gsm8k_suite.py's JSONL), on the questions every
file shares.

    python benchmarks/plane.py benchmarks/runs/final_1-100/*.jsonl --out benchmarks/plane.png

A file named ``METHOD_SETTING.jsonl`` (``gboost_b290.jsonl``, ``rsd@8_t05.jsonl``) is a point of
METHOD's line; ``--label FILE=NAME`` names other files' methods. Prints one row per point: method,
file, right, accuracy and interval, and per question the LLM's tokens, of them its prefill of
context (``llm_context_tokens``) and the rest (the positions it was asked to score or write), PRM
tokens and wall seconds.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from gsm8k_table import read  # noqa: E402
from gboost.evals.loop import wilson_interval  # noqa: E402


def method_of(path: Path, labels: dict[str, str]) -> str:
    return labels.get(str(path)) or labels.get(path.name) or path.stem.split("_")[0]


def point(recs: list[dict]) -> dict:
    n = len(recs)
    right = sum(bool(r["correct"]) for r in recs)
    lo, hi = wilson_interval(right, n)
    per = lambda key: sum((r.get("cost") or {}).get(key, 0) for r in recs) / n  # noqa: E731
    return {"n": n, "right": right, "accuracy": right / n, "lo": lo, "hi": hi, "llm_tokens": per("llm_tokens"),
            "llm_context_tokens": per("llm_context_tokens"), "prm_tokens": per("prm_tokens"),
            "wall_s": sum(r.get("wall_s", 0.0) for r in recs) / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("files", nargs="+", type=Path)
    ap.add_argument("--label", nargs="+", default=[], metavar="FILE=NAME")
    ap.add_argument("--out", type=Path, default=None, help="PNG to draw (matplotlib: the bench extra)")
    ap.add_argument("--title", default="GSM8K: accuracy against LLM tokens")
    args = ap.parse_args(argv)
    labels = dict(item.split("=", 1) for item in args.label)
    runs = {p: read(p) for p in args.files}
    common = set.intersection(*(set(r) for r in runs.values()))
    if not common:
        raise SystemExit("the files share no question")
    points = []
    for p, recs in runs.items():
        pt = point([recs[i] for i in sorted(common)])
        points.append({"method": method_of(p, labels), "file": p.name, **pt})
    print(f"{len(common)} questions in every file")
    print("| method | file | right | accuracy (95% CI) | LLM tokens / q | of them prefill | of them step positions "
          "| PRM tokens / q | wall s / q |")
    print("|---|---|---|---|---|---|---|---|---|")
    for pt in sorted(points, key=lambda x: (x["method"], x["llm_tokens"])):
        print(f"| {pt['method']} | {pt['file']} | {pt['right']} / {pt['n']} | {pt['accuracy']:.2f} "
              f"({pt['lo']:.2f}-{pt['hi']:.2f}) | {pt['llm_tokens']:.0f} | {pt['llm_context_tokens']:.0f} | "
              f"{pt['llm_tokens'] - pt['llm_context_tokens']:.0f} | "
              f"{pt['prm_tokens']:.0f} | {pt['wall_s']:.1f} |")
    if args.out is not None:
        draw(points, args.out, f"{args.title} ({len(common)} questions)")
    return 0


def draw(points: list[dict], out: Path, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method in sorted({p["method"] for p in points}):
        pts = sorted((p for p in points if p["method"] == method), key=lambda p: p["llm_tokens"])
        xs, ys = [p["llm_tokens"] for p in pts], [p["accuracy"] for p in pts]
        err = [[p["accuracy"] - p["lo"] for p in pts], [p["hi"] - p["accuracy"] for p in pts]]
        ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
    ax.set_xlabel("LLM tokens per question")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    raise SystemExit(main())
