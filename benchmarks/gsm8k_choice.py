"""Re-choose finished GSM8K runs' answers under other final choices, from their recorded candidates.

    python benchmarks/gsm8k_choice.py benchmarks/runs/dev_372-471/gsm8k_gboost_head_replace_372-471.jsonl

A search's record lists every terminal path it left (``candidates``: step rewards, visits, answer
key, graded). This replays ``final_choice`` x ``prm_aggregation`` with the engine's own rule
(engine/search/final.py ``pick_final``) on them, so one run answers how each choice would have
done on the same trees, next to two references: ``majority`` (one vote per path, no PRM) and
``found`` (some path reached the gold answer: what no final choice can exceed). The replayed
choice of the run's own config must reproduce its recorded answers (``agrees``).

The trees themselves depend on ``prm_aggregation`` only through the greedy completion's start, so
rows other than the run's own are the choice alone, not a rerun.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import gsm8k_table  # a sibling: benchmarks/ is on the path as this script's folder
from gboost.evals.loop import wilson_interval
from gboost.search.final import Candidate, pick_final

RULES = [(fc, how) for fc in ("best_path", "weighted_vote") for how in ("last", "mean", "min")]


def read(path: Path) -> list[dict]:
    return [r for r in gsm8k_table.read(path).values() if r.get("error") is None]


def as_candidates(rec: dict, *, votes: bool = False) -> list[tuple[Candidate, bool]]:
    """(Candidate, correct) per recorded path; ``votes``: every path counts 1 (plain majority)."""
    return [(Candidate(c["id"], (1.0,) if votes else tuple(c["rewards"]), c["visits"],
                       c["has_answer"], c["key"]), c["correct"]) for c in rec["candidates"]]


def chosen_right(rec: dict, final_choice: str, how: str, *, votes: bool = False) -> bool:
    pairs = as_candidates(rec, votes=votes)
    got = pick_final([c for c, _ in pairs], final_choice, how)
    return got is not None and next(ok for c, ok in pairs if c is got)


def table(path: Path) -> list[str]:
    recs = [r for r in read(path) if "candidates" in r]
    if not recs:
        return [f"{path.name}: no records with candidates (runs before session 15 lack them)"]
    cfg_path = path.with_name(path.name.replace(".jsonl", ".config.json"))
    own = None
    if cfg_path.exists():
        cfg = json.loads(cfg_path.read_text())
        own = (cfg.get("final_choice"), cfg.get("prm_aggregation"))
    n = len(recs)

    def line(name: str, ok: int, note: str = "") -> str:
        lo, hi = wilson_interval(ok, n)
        return f"| {name} | {ok} / {n} | {ok / n:.2f} ({lo:.2f}–{hi:.2f}) | {note} |"

    out = [f"**{path.name}** ({n} questions; paths per question "
           f"{sum(len(r['candidates']) for r in recs) / n:.1f}, distinct answers "
           f"{sum(len({c['key'] for c in r['candidates']}) for r in recs) / n:.1f})", "",
           "| final choice | right | accuracy (95% CI) | |", "|---|---|---|---|"]
    for fc, how in RULES:
        rights = [chosen_right(r, fc, how) for r in recs]
        note = ""
        if (fc, how) == own:
            agree = sum(x == bool(r["correct"]) for x, r in zip(rights, recs))
            note = f"the run's own: agrees on {agree} / {n}"
        out.append(line(f"{fc}, {how}", sum(rights), note))
    out.append(line("majority (no PRM)", sum(chosen_right(r, "weighted_vote", "last", votes=True) for r in recs)))
    out.append(line("found (some path right)", sum(any(c["correct"] for c in r["candidates"]) for r in recs),
                    "the ceiling of any final choice"))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("runs", nargs="+", type=Path, help="per-question records (*.jsonl) with candidates")
    args = ap.parse_args(argv)
    for p in args.runs:
        print("\n".join(table(p)) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
