"""scripts/gpu_check.sh, the parts that need no GPU: its plan, its arguments, and its refusal to run
(before installing anything) where CUDA is missing. The GPU run itself is its own test."""
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def gpu_check(*args, env=None, timeout=120):
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def test_dry_run_prints_every_step_and_writes_nothing(tmp_path):
    out = tmp_path / "res" / "gpu_check.md"
    r = gpu_check("--dry-run", "--out", str(out))
    assert r.returncode == 0, r.stderr
    plan = r.stdout
    for needle in ("-m pytest -q -m gpu", "benchmarks/test_kernels.py", "benchmarks/test_generate.py",
                   "gboost.cli solve --device cuda", "gboost.cli bench --quick --device cuda", str(out),
                   "pip install --no-deps"):
        assert needle in plan, needle
    # the step limits add up to no more than the whole run's, which is under 8 minutes
    assert "stops within 465s" in plan
    assert not out.parent.exists()


def test_results_go_to_OUT_by_default_and_wheels_are_installed_first(tmp_path):
    r = gpu_check("--dry-run", "--wheels", "/carried/.whl", env={"OUT": str(tmp_path)})
    assert f"results {tmp_path}/gpu_check.md" in r.stdout
    assert "pip install --no-index --no-deps --target" in r.stdout and "/carried/.whl/*.whl" in r.stdout


def test_unknown_arguments_and_help():
    r = gpu_check("--bogus")
    assert r.returncode == 2 and "unknown argument --bogus" in r.stderr
    h = gpu_check("--help")
    assert h.returncode == 0 and "under 8 minutes" in h.stdout and "--fetch-wheels" in h.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA refusal")
def test_without_cuda_it_stops_before_installing_or_running_anything(tmp_path):
    out = tmp_path / "gpu_check.md"
    r = gpu_check("--out", str(out))
    assert r.returncode == 2 and "no CUDA device" in r.stderr
    log = (tmp_path / "env.log").read_text()
    assert "date:" in log and "pip" not in log  # nothing installed
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["env.log"]
