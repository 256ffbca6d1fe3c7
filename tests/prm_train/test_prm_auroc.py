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


def _suite_until_the_stack(monkeypatch, tmp_path, argv, rows=1):
    """Run benchmarks/gsm8k_suite.py up to build_stack; returns build_stack's keywords."""
    import asyncio

    import gsm8k_suite

    seen = {}

    class Stop(Exception):
        pass

    async def fake_build_stack(cfg, **kw):
        seen.update(kw, cfg=cfg)
        raise Stop

    monkeypatch.setattr(gsm8k_suite, "build_stack", fake_build_stack)
    data = tmp_path / "gsm8k_d.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n' * rows)
    with pytest.raises(Stop):
        asyncio.run(gsm8k_suite.main(["--data", str(data), "--out-dir", str(tmp_path), *argv]))
    return seen


def test_gsm8k_suite_passes_its_prm_to_the_stack(monkeypatch, tmp_path):
    for argv, want in ((["--prm", "value-head:/some/head"], "value-head:/some/head"), ([], None)):
        seen = _suite_until_the_stack(monkeypatch, tmp_path, ["--limit", "1", "--methods", "slm", *argv])
        assert seen["prm"] == want


def test_gsm8k_suite_runs_a_named_config_on_a_line_range(monkeypatch, tmp_path):
    cfg = tmp_path / "v.toml"
    cfg.write_text('[search]\nmethod = "rsd"\nrsd_threshold = 0.4\n')
    seen = _suite_until_the_stack(monkeypatch, tmp_path, ["--lines", "2-3", "--methods", "myrsd",
                                                          "--config", f"myrsd={cfg}"], rows=3)
    assert (seen["cfg"].method, seen["cfg"].rsd_threshold) == ("rsd", 0.4)  # the file, not the chain config
    assert seen["options"].max_draft == 16  # the engine's default unless --max-draft says otherwise
    seen = _suite_until_the_stack(monkeypatch, tmp_path, ["--limit", "1", "--methods", "slm", "--max-draft", "4",
                                                          "--draft-policy", "adaptive"])
    assert (seen["options"].max_draft, seen["options"].draft_policy) == (4, "adaptive")


@pytest.mark.parametrize("argv, msg", [
    (["--lines", "990-1001", "--methods", "slm"], "reserved"),
    (["--limit", "1001", "--methods", "slm"], "--limit 1001: GSM8K lines 1001-1319 are reserved"),
    (["--methods", "slm", "--config", "slm"], "want NAME=FILE"),
    (["--methods", "slm", "--prm-of", "gboost=value-head:/x"], "--prm-of"),
    (["--methods", "slm", "--prm-of", "slm=/x"], "--prm-of"),
    (["--methods", "slm", "--max-draft", "0"], "--max-draft must be >= 1"),
])
def test_gsm8k_suite_refuses_bad_arguments(monkeypatch, tmp_path, capsys, argv, msg):
    import asyncio

    import gsm8k_suite

    async def no_models(*a, **kw):  # a bad argument must fail before the models load
        raise AssertionError("build_stack reached")

    monkeypatch.setattr(gsm8k_suite, "build_stack", no_models)
    data = tmp_path / "gsm8k_test.jsonl"
    data.write_text('{"question": "1+1?", "answer": "#### 2"}\n' * 1010)
    with pytest.raises(SystemExit):
        asyncio.run(gsm8k_suite.main(["--data", str(data), "--out-dir", str(tmp_path), *argv]))
    assert msg in capsys.readouterr().err


def test_final_step_token_follows_the_heads_sequence_and_the_flag():
    from types import SimpleNamespace

    from prm_auroc import final_token
    m = SimpleNamespace(eos_token_ids=[7, 8])
    assert final_token(m, SimpleNamespace(sequence="slm"), "eot") == 7
    assert final_token(m, SimpleNamespace(sequence="slm"), "delimiter") is None
    assert final_token(m, SimpleNamespace(sequence="text"), "eot") is None  # another model's text layout
