"""engine/search is model-free policy: importing any of its modules runs no model code."""
import pkgutil
import subprocess
import sys

import gboost.search

# what runs (or holds) a model: torch and every engine module built on it
MODEL_RUNNING = ("torch", "triton", "gboost.kernels", "gboost.collab", "gboost.kv", "gboost.scheduler",
                 "gboost.models", "gboost.llm", "gboost.engine", "gboost.sampling", "gboost.context", "gboost.stack")


def _modules():
    return sorted(f"gboost.search.{m.name}" for m in pkgutil.iter_modules(gboost.search.__path__))


def test_every_search_module_imports_no_model_code():
    assert "gboost.search.gboost" in _modules() and "gboost.search.api" in _modules()
    code = ("import importlib, sys\n"
            "for m in sys.argv[2:]:\n"
            "    importlib.import_module(m)\n"
            "bad = sorted(n for n in sys.modules if any(n == p or n.startswith(p + '.') for p in sys.argv[1].split(',')))\n"
            "print(','.join(bad))\n")
    # one process per module: a module that imports torch only through another would otherwise hide
    for mod in _modules():
        out = subprocess.run([sys.executable, "-c", code, ",".join(MODEL_RUNNING), mod],
                             capture_output=True, text=True, check=True).stdout.strip()
        assert out == "", f"{mod} imports model-running modules: {out}"
