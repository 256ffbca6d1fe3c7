"""benchmarks/plane.py: points on the questions every file shares, methods from the file names."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import plane  # noqa: E402


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def rec(idx, correct, llm=0, ctx=0):
    return {"idx": idx, "correct": correct, "cost": {"llm_tokens": llm, "llm_context_tokens": ctx, "prm_tokens": 5},
            "wall_s": 2.0, "steps": []}


def test_points_on_the_shared_questions(tmp_path, capsys):
    a = _write(tmp_path / "rsd_t05.jsonl", [rec(0, True, 100, 10), rec(1, False, 300, 30), rec(2, True, 0)])
    b = _write(tmp_path / "rsd_t07.jsonl", [rec(0, True, 200), rec(1, True, 400)])
    c = _write(tmp_path / "x.jsonl", [rec(0, False), rec(1, False)])
    assert plane.main([str(a), str(b), str(c), "--label", "x.jsonl=slm"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("2 questions in every file")          # line 2 is only in the first file
    assert "| rsd | rsd_t05.jsonl | 1 / 2 | 0.50 (0.09-0.91) | 200 | 20 | 180 |" in out
    assert "| rsd | rsd_t07.jsonl | 2 / 2 |" in out and "| slm | x.jsonl | 0 / 2 |" in out


def test_the_plot_is_drawn(tmp_path):
    pytest.importorskip("matplotlib")  # the bench extra
    a = _write(tmp_path / "rsd_t05.jsonl", [rec(0, True, 100), rec(1, False, 300)])
    assert plane.main([str(a), "--out", str(tmp_path / "p.png")]) == 0
    assert (tmp_path / "p.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
