"""benchmarks/prm_auroc.py: the table it reports (counts, intervals, signals that skip solutions)."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from prm_auroc import hanley_mcneil, recorded_rewards, table  # noqa: E402


def test_hanley_mcneil_interval():
    lo, hi = hanley_mcneil(0.75, 40, 60)
    assert lo < 0.75 < hi
    # by hand: Q1 = 0.75/1.25 = 0.6, Q2 = 2(0.5625)/1.75 = 0.642857;
    # SE^2 = (0.1875 + 39(0.0375) + 59(0.080357)) / 2400 = 0.0026630, SE = 0.051604
    assert (hi - lo) / (2 * 1.96) == pytest.approx(0.051604, abs=1e-5)
    assert hanley_mcneil(0.75, 400, 600)[1] - hanley_mcneil(0.75, 400, 600)[0] < hi - lo  # more data, narrower


def test_recorded_rewards_skip_unscored_solutions_and_the_table_counts_them():
    sols = [{"correct": True, "rewards": [0.2, 0.9]}, {"correct": False, "rewards": [0.3, 0.1]},
            {"correct": True, "rewards": [None, 0.5]}, {"correct": False, "rewards": [0.8, 0.4]}]
    v = recorded_rewards(sols)
    assert v == [[0.2, 0.9], [0.3, 0.1], None, [0.8, 0.4]]
    rows = table({"judge": v}, sols)
    # 3 scored solutions, 1 right; last step: 0.9 beats 0.1 and 0.4 -> 1.00; min: 0.2 vs 0.1, 0.4 -> 0.50
    assert rows[2].startswith("| judge | 3 (1) | 1.00 (") and "| 0.50 (" in rows[2]
    assert table({"judge": [[0.1], [0.2]]}, sols[:1] + sols[2:3])[2].endswith("n/a | n/a | n/a |")  # one class


def test_gsm8k_suite_passes_its_prm_to_the_stack(monkeypatch, tmp_path):
    import asyncio

    import gsm8k_suite

    seen = {}

    class Stop(Exception):
        pass

    async def fake_build_stack(cfg, **kw):
        seen.update(kw)
        raise Stop

    monkeypatch.setattr(gsm8k_suite, "build_stack", fake_build_stack)
    data = tmp_path / "d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n')
    for argv, want in ((["--prm", "value-head:/some/head"], "value-head:/some/head"), ([], None)):
        with pytest.raises(Stop):
            asyncio.run(gsm8k_suite.main(["--data", str(data), "--limit", "1", "--methods", "slm",
                                          "--out-dir", str(tmp_path), *argv]))
        assert seen["prm"] == want


def test_final_step_token_follows_the_heads_sequence_and_the_flag():
    from types import SimpleNamespace

    from prm_auroc import final_token
    m = SimpleNamespace(eos_token_ids=[7, 8])
    assert final_token(m, SimpleNamespace(sequence="slm"), "eot") == 7
    assert final_token(m, SimpleNamespace(sequence="slm"), "delimiter") is None
    assert final_token(m, SimpleNamespace(sequence="text"), "eot") is None  # another model's text layout
