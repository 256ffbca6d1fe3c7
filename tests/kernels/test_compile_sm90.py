"""The kernel launches the engine makes (recorded in launches.json by record_launches.py) compile for
sm_90 without register spills, and the recording matches the kernels as they are now."""
import importlib
import inspect
import json
import os
import pkgutil
import subprocess
import sys

import pytest
import triton

import gboost.kernels

HERE = os.path.dirname(__file__)
_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")


def _launches():
    with open(os.path.join(HERE, "launches.json")) as f:
        return json.load(f)


def _kernel_params(fn):
    return list(inspect.signature(fn).parameters)


def test_the_recording_matches_the_kernels_and_covers_every_one():
    # A kernel whose parameters changed since the recording, or a kernel never recorded, means
    # launches.json is stale: rerun `python tests/kernels/record_launches.py`.
    launches = _launches()
    seen = set()
    for r in launches:
        mod, _, name = r["kernel"].rpartition(".")
        fn = getattr(importlib.import_module(mod), name).fn
        assert set(r["signature"]) | set(r["constexprs"]) == set(_kernel_params(fn)), r["kernel"]
        seen.add(r["kernel"])
    defined = set()
    for m in pkgutil.iter_modules(gboost.kernels.__path__):
        mod = importlib.import_module(f"gboost.kernels.{m.name}")
        for name, obj in vars(mod).items():
            if hasattr(obj, "fn") and hasattr(obj, "run") and name.endswith("_kernel"):
                defined.add(f"gboost.kernels.{m.name}.{name}")
    assert defined == seen, f"never launched in the recording: {defined - seen}; gone: {seen - defined}"


@pytest.mark.skipif(not os.path.exists(os.path.join(_BIN, "ptxas-blackwell")),
                    reason="Triton's NVIDIA backend (ptxas) is not installed: cannot compile for sm_90 here")
def test_all_recorded_launches_compile_for_sm90_without_spills():
    # No GPU needed: Triton compiles for a target (TTIR -> PTX -> cubin with the ptxas it ships). The
    # interpreter is lenient; the real compiler must accept every specialisation the engine launches.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    r = subprocess.run([sys.executable, os.path.join(HERE, "sm90_compile.py"), "-v"], env=env, capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr[-4000:]
    assert r.stdout.count("ok   ") == len(_launches()) and "FAIL" not in r.stdout, r.stdout
