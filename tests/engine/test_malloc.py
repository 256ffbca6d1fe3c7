"""engine/malloc.py: glibc's malloc settings applied once, and the switch that leaves malloc alone."""
import subprocess
import sys

import pytest

CHECK = """
import ctypes, sys
from gboost import malloc
ok = malloc.tune_malloc()
print(ok, malloc.tune_malloc() == ok)
"""


def run(env_value):
    import os
    env = dict(os.environ)
    env.pop("GBOOST_MALLOC_TUNE", None)
    if env_value is not None:
        env["GBOOST_MALLOC_TUNE"] = env_value
    return subprocess.run([sys.executable, "-c", CHECK], capture_output=True, text=True, env=env, check=True).stdout.split()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_tune_malloc_applies_once_and_can_be_turned_off():
    import platform
    on = run(None)
    if platform.libc_ver()[0] == "glibc":
        assert on == ["True", "True"]
    assert run("0") == ["False", "True"]


def test_a_cpu_engine_applies_it(monkeypatch):
    from gboost import malloc
    from gboost.testing import tiny_engine
    calls = []
    monkeypatch.setattr(malloc, "_done", None)
    monkeypatch.setattr("gboost.engine.tune_malloc", lambda: calls.append(1))
    tiny_engine({"slm": 1}, num_blocks=8)
    assert calls == [1]
