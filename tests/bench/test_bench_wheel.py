"""`gboost bench` from a wheel: the naive baseline ships inside the package, so the bench runs from an
installed wheel with no checkout on sys.path (the wheel is built from a copy of the sources and
installed with pip --target; the checks run from a directory outside the checkout)."""
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ["gboost/bench/__init__.py", "gboost/bench/checkpoints.py", "gboost/bench/naive.py",
         "gboost/bench/report.py", "gboost/bench/runs.py"]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(wheel, site): the wheel built from the checkout's sources, and the folder it is installed in."""
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"   # a copy: building writes build/ and *.egg-info beside the sources
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("engine", "kernels"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(pip + ["wheel", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"), str(src)],
                   check=True, capture_output=True, timeout=300)
    wheel = next((tmp / "dist").glob("gboost-*.whl"))
    subprocess.run(pip + ["install", "--no-deps", "--no-index", "--target", str(tmp / "site"), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    return wheel, tmp / "site"


def _run(site: Path, cwd: Path, *args, timeout=300):
    env = {**os.environ, "PYTHONPATH": str(site)}  # the installed wheel, not the checkout
    return subprocess.run([sys.executable, *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_the_wheel_holds_the_bench_and_no_test_double(installed):
    wheel, _ = installed
    names = set(zipfile.ZipFile(wheel).namelist())
    assert set(BENCH) <= names
    assert {"gboost/prm/scorer.py", "gboost/prm/heads.py", "gboost/prm/value_head.py"} <= names
    assert not any("mock_chat_api" in n or n.startswith(("benchmarks/", "tests/")) for n in names)


def test_the_bench_imports_from_the_installed_wheel_alone(installed, tmp_path):
    _, site = installed
    check = ("import sys, gboost, gboost.bench.naive as naive, gboost.bench.runs\n"
             f"assert gboost.__file__.startswith({str(site)!r}), gboost.__file__\n"
             "from gboost.bench import load_naive, main\n"
             "assert load_naive() is naive and callable(naive.NaiveExecutor) and callable(naive.load_hf)\n"
             # every gboost module came from the wheel; the checkout may hold the venv (CI's does), so
             # only paths inside it but outside the interpreter's prefix count as the checkout
             f"bad = [m.__file__ for n, m in sys.modules.items() if n.startswith('gboost')"
             f" and getattr(m, '__file__', None) and not m.__file__.startswith({str(site)!r})]\n"
             "assert not bad, bad\n"
             f"assert not any(p and p.startswith({str(ROOT)!r}) and not p.startswith(sys.prefix)"
             " for p in sys.path), sys.path\n"
             "print('ok')\n")
    p = _run(site, tmp_path, "-c", check)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]
    p = _run(site, tmp_path, "-m", "gboost.cli", "bench", "--help")
    assert p.returncode == 0 and "--quick" in p.stdout, p.stderr[-3000:]


@pytest.mark.slow
def test_bench_quick_runs_from_the_installed_wheel(installed, tmp_path):
    pytest.importorskip("transformers")
    _, site = installed
    script = site / "bin" / "gboost"   # the console script pip wrote: what a user types
    assert script.is_file()
    p = subprocess.run([str(script), "bench", "--quick", "--json"], cwd=tmp_path, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(site)}, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    import json
    rows = json.loads(p.stdout.strip().splitlines()[-1])["rows"]
    assert any(r["what"].startswith("gboost: s/request") for r in rows)
    print(p.stdout)
