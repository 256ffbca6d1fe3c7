#!/usr/bin/env python3
"""The two set-up commands: a G-Boost solve on the demo pair, and the test suite.

    python3 scripts/dev.py solve ["question"] [gboost solve flags]
    python3 scripts/dev.py test [pytest flags]
    python3 scripts/dev.py lock            # record the env's exact versions in constraints.txt

Each makes the virtual environment (.venv, or --venv) when it is missing and installs the project
into it with the README's command, again only when pyproject.toml (or the constraints, with
--locked) changed since. --locked installs the versions the suite last passed with
(constraints.txt); without it pip takes the newest releases. --dry-run prints the steps only.
Standard library only: this runs before anything is installed.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# The README's install command: a bare `torch` would pull GBs of CUDA packages on a CPU machine.
INSTALL = ["-m", "pip", "install", "torch==2.13.0", "-e", ".[demo,test]"]
CONSTRAINTS = ROOT / "constraints.txt"
STAMP = ".gboost-install"   # in the venv: what the last install was made from
DEMO_QUESTION = "Natalia sold 48 clips in April and half as many in May. How many in total?"


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def install_command(locked: bool) -> list[str]:
    return INSTALL + (["-c", str(CONSTRAINTS.relative_to(ROOT))] if locked else [])


def install_key(locked: bool) -> str:
    """What an install depends on: the command, pyproject.toml and, when locked, the constraints."""
    h = hashlib.sha256(" ".join(install_command(locked)).encode())
    for f in [ROOT / "pyproject.toml"] + ([CONSTRAINTS] if locked else []):
        h.update(f.read_bytes())
    return h.hexdigest()


def plan(task: str, args: list[str], venv: Path, locked: bool) -> list[list[str]]:
    """The commands `task` runs, in order (each a list for subprocess, run in ROOT)."""
    py = venv_python(venv)
    steps = []
    if not py.exists():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    stamp = venv / STAMP
    if not (stamp.exists() and stamp.read_text().strip() == install_key(locked)):
        steps.append([str(py), *install_command(locked)])
    if task == "test":
        steps.append([str(py), "-m", "pytest", "-q", *args])
    elif task == "solve":
        if not args or args[0].startswith("-"):
            args = [DEMO_QUESTION, *args]
        steps.append([str(py), "-m", "gboost.cli", "solve", *args])
    elif task == "lock":
        steps.append([str(py), "-m", "pip", "freeze", "--exclude-editable"])
    return steps


def _write_lock(freeze: str) -> None:
    import platform
    from datetime import date
    head = (f"# The exact versions the test suite last passed with ({date.today()}, Python "
            f"{platform.python_version()}, {platform.machine()}).\n"
            "# pip install -c constraints.txt torch==2.13.0 -e \".[demo,test]\"  (scripts/dev.py --locked)\n")
    CONSTRAINTS.write_text(head + "".join(l + "\n" for l in freeze.splitlines() if l and not l.startswith("#")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("task", choices=["solve", "test", "lock"])
    ap.add_argument("--venv", type=Path, default=Path(os.environ.get("GBOOST_VENV", ROOT / ".venv")))
    ap.add_argument("--locked", action="store_true", help="install the versions in constraints.txt")
    ap.add_argument("--dry-run", action="store_true", help="print the steps, run nothing")
    opts, rest = ap.parse_known_args(argv)
    if sys.version_info < (3, 10):
        print(f"gboost needs Python 3.10 or newer; this is {sys.version.split()[0]}", file=sys.stderr)
        return 2
    venv = opts.venv if opts.venv.is_absolute() else ROOT / opts.venv
    steps = plan(opts.task, rest, venv, opts.locked)
    for step in steps:
        print("+ " + shlex.join(step), file=sys.stderr, flush=True)
        if opts.dry_run:
            continue
        freeze = "freeze" in step
        out = subprocess.run(step, cwd=ROOT, stdout=subprocess.PIPE if freeze else None, text=True)
        if out.returncode:
            if "venv" in step[:3]:
                print("python3 -m venv failed (on Debian/Ubuntu: apt install python3-venv)", file=sys.stderr)
            return out.returncode
        if step[1:] == install_command(opts.locked):   # remember what this install was made from
            (venv / STAMP).write_text(install_key(opts.locked) + "\n")
        if freeze:
            _write_lock(out.stdout)
            print(f"wrote {CONSTRAINTS.relative_to(ROOT)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
