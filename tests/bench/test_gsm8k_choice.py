"""benchmarks/gsm8k_choice.py replays final choices on recorded candidates, against hand counts."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from gsm8k_choice import chosen_right, table  # noqa: E402


def _cand(i, rewards, key, correct, visits=1, has_answer=True):
    return {"id": i, "rewards": rewards, "visits": visits, "has_answer": has_answer, "key": key,
            "correct": correct}


# one question: two paths say 5 (right), their last steps 0.4 and 0.5; one says 6 (wrong) at 0.8
SPLIT = {"idx": 0, "correct": False, "error": None, "candidates": [
    _cand(1, [0.9, 0.4], "5", True), _cand(2, [0.9, 0.5], "5", True), _cand(3, [0.2, 0.8], "6", False)]}
# a question no path got right, and one whose only stated answer is right
MISS = {"idx": 1, "correct": False, "error": None, "candidates": [_cand(1, [0.7], "3", False)]}
CAPPED = {"idx": 2, "correct": True, "error": None, "candidates": [
    _cand(1, [0.99], None, False, has_answer=False), _cand(2, [0.1], "4", True)]}


def test_each_rule_on_hand_made_trees():
    assert not chosen_right(SPLIT, "best_path", "last")          # 0.8 beats 0.5
    assert chosen_right(SPLIT, "best_path", "mean")              # 0.7 beats 0.65 and 0.5
    assert chosen_right(SPLIT, "best_path", "min")               # 0.5 beats 0.4 and 0.2
    assert chosen_right(SPLIT, "weighted_vote", "last")          # 0.9 for "5" against 0.8 for "6"
    assert chosen_right(SPLIT, "weighted_vote", "last", votes=True)
    assert chosen_right(CAPPED, "best_path", "last")             # a stated answer beats a capped path
    assert not any(chosen_right(MISS, fc, "last") for fc in ("best_path", "weighted_vote"))


def test_table_counts_and_checks_the_runs_own_rule(tmp_path):
    run = tmp_path / "gsm8k_x_1-3.jsonl"
    run.write_text("".join(json.dumps(r) + "\n" for r in (SPLIT, MISS, CAPPED)))
    (tmp_path / "gsm8k_x_1-3.config.json").write_text(json.dumps(
        {"final_choice": "best_path", "prm_aggregation": "last"}))
    rows = {l.split(" | ")[0].lstrip("| "): l for l in table(run) if l.startswith("| ")}
    assert "| 1 / 3 |" in rows["best_path, last"] and "agrees on 3 / 3" in rows["best_path, last"]
    assert "| 2 / 3 |" in rows["weighted_vote, last"] and "agrees" not in rows["weighted_vote, last"]
    assert "| 2 / 3 |" in rows["majority (no PRM)"] and "| 2 / 3 |" in rows["found (some path right)"]
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gsm8k_choice.py"), str(run)],
                         capture_output=True, text=True, check=True).stdout
    assert "paths per question 2.0, distinct answers 1.7" in out
