"""benchmarks/gsm8k_table.py's paired comparison against hand counts and the exact binomial."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gsm8k_table import mcnemar_p, paired  # noqa: E402


def test_mcnemar_p_is_the_exact_two_sided_binomial():
    assert mcnemar_p(0, 0) == 1.0 and mcnemar_p(3, 3) == 1.0
    assert mcnemar_p(0, 5) == 2 / 32            # P(X <= 0) + P(X >= 5) for X ~ Bin(5, 1/2)
    assert mcnemar_p(1, 6) == mcnemar_p(6, 1) == 2 * (1 + 7) / 128
    assert abs(mcnemar_p(7, 20) - 0.019) < 1e-3  # the session-14 rsd comparison in RESULTS.md


def _rec(idx, correct):
    return {"idx": idx, "correct": correct, "steps": [], "wall_s": 1.0,
            "cost": {"slm_tokens": 1, "llm_tokens": 0, "prm_tokens": 0, "llm_calls": 0}}


def test_paired_counts_only_shared_questions(tmp_path):
    a = {i: _rec(i, c) for i, c in enumerate([True, True, False, False, True])}
    b = {i: _rec(i, c) for i, c in enumerate([True, False, True, True])}  # question 4 unfinished
    assert paired(a, b)[:3] == (4, 1, 2)
    for name, recs in (("a", a), ("b", b)):
        (tmp_path / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs.values()))
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gsm8k_table.py"), "--paired",
                          str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")],
                         capture_output=True, text=True, check=True).stdout
    assert "| b | 4 | 1 | 2 | 1 |" in out
