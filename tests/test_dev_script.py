"""scripts/dev.py, the README's two set-up commands, in dry runs: the steps they would take, nothing installed."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("dev", ROOT / "scripts" / "dev.py")
dev = importlib.util.module_from_spec(spec)
spec.loader.exec_module(dev)


def test_the_install_is_the_readme_long_form():
    readme = (ROOT / "README.md").read_text()
    long_form = re.search(r"^\S*python3? -m (pip install torch\S* -e \S+)", readme, re.M).group(1)
    assert " ".join(dev.INSTALL[1:]) == long_form.replace('"', "")
    assert "python3 scripts/dev.py solve" in readme and "python3 scripts/dev.py test" in readme


def test_a_fresh_machine_makes_the_venv_installs_then_runs(tmp_path):
    venv = tmp_path / "v"
    test = dev.plan("test", ["-k", "x"], venv, locked=False)
    py = str(venv / "bin" / "python")
    assert test == [[sys.executable, "-m", "venv", str(venv)], [py, *dev.INSTALL], [py, "-m", "pytest", "-q", "-k", "x"]]
    solve = dev.plan("solve", [], venv, locked=False)
    assert solve[-1] == [py, "-m", "gboost.cli", "solve", dev.DEMO_QUESTION]
    assert dev.plan("solve", ["2+2?", "--method", "slm"], venv, False)[-1][-3:] == ["2+2?", "--method", "slm"]
    assert dev.plan("solve", ["--json"], venv, False)[-1][-2:] == [dev.DEMO_QUESTION, "--json"]


def test_an_up_to_date_venv_is_reused_and_a_changed_project_reinstalls(tmp_path, monkeypatch):
    venv = tmp_path / "v"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").write_text("")
    (venv / dev.STAMP).write_text(dev.install_key(False) + "\n")
    assert dev.plan("test", [], venv, False) == [[str(venv / "bin" / "python"), "-m", "pytest", "-q"]]
    # --locked is another install; so is an edited pyproject.toml
    assert dev.plan("test", [], venv, True)[0][-2:] == ["-c", "constraints.txt"]
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text((ROOT / "pyproject.toml").read_text() + "\n# edited\n")
    monkeypatch.setattr(dev, "ROOT", tmp_path)
    assert dev.plan("test", [], venv, False)[0][1:] == dev.INSTALL


def test_the_lock_pins_what_the_suite_needs():
    pins = dict(l.split("==", 1) for l in (ROOT / "constraints.txt").read_text().splitlines()
                if l and not l.startswith("#"))
    assert {"torch", "transformers", "triton", "tokenizers", "pytest"} <= set(pins), sorted(pins)
    assert pins["torch"].startswith("2.13.0")


def test_dry_run_prints_the_steps_and_runs_nothing(tmp_path):
    venv = tmp_path / "never"
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "dev.py"), "--dry-run", "--venv", str(venv), "test"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and not venv.exists()
    lines = out.stderr.splitlines()
    assert [l.split()[2:4] for l in lines] == [["-m", "venv"], ["-m", "pip"], ["-m", "pytest"]], lines


@pytest.mark.parametrize("task", ["bogus"])
def test_an_unknown_task_is_refused(task):
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "dev.py"), task], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
