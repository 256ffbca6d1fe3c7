"""benchmarks/lora_unmerged.py on a tiny checkpoint: both layouts run, and the memory it reports
is what the layouts hold (two copies against one copy plus the adapter)."""
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import lora_unmerged  # noqa: E402
from gboost.testing import write_tiny_checkpoint  # noqa: E402


def test_both_layouts_run_and_the_memory_adds_up(tmp_path, capsys):
    ck = write_tiny_checkpoint(tmp_path / "ck", 1)
    assert lora_unmerged.main(["--slm", str(ck), "--rank", "4", "--tokens", "2", "--repeats", "1"]) == 0
    out = json.loads(capsys.readouterr().out)
    m, u = out["layouts"]["merge"], out["layouts"]["unmerged"]
    assert (m["resident_models"], u["resident_models"]) == (2, 1)
    # one copy W plus rank-4 fp32 A/B, against two copies 2W
    assert u["weight_bytes"] < m["weight_bytes"] < 2 * u["weight_bytes"]
    assert all(v > 0 for v in (m["proxy_ms_per_token"], u["proxy_ms_per_token"], u["tuned_ms_per_token"]))
