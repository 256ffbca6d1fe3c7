"""What the C ABI tests share: paths, the secret that must never appear, the engine config, the
reference generation and the example runner."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CRASH_MARKERS = ("Traceback", "Segmentation fault", "Fatal Python error", "core dumped", "Aborted")
SECRET = "sk-gboosttestsecret0123456789"


def engine_config(ckpt: Path, **kw) -> dict:
    cfg = {"slm": str(ckpt), "llm": str(ckpt), "prm": None, "prm_kind": "token_pair", "dtype": "float32",
           "kv_memory_gb": 0.05, "collab_mode": "speculative",
           "search": {"num_simulations": 2, "max_depth": 2, "max_step_tokens": 8, "seed": 3}}
    cfg.update(kw)
    return cfg


def reference(py_engine, prompt: str, **params) -> list[int]:
    from gboost.sampling import SamplingParams

    ids = py_engine.role("slm").tokenizer.encode(prompt)
    return py_engine.generate([ids], SamplingParams(**params))[0].token_ids


def run_example(built, config, *args, env_extra=None, timeout=180):
    env = dict(os.environ)
    env.update(env_extra or {})
    cfg = config if isinstance(config, str) else json.dumps(config)
    r = subprocess.run([str(built["example"]), cfg, *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, env=env)
    lines = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return r, lines


def assert_no_crash(r):
    assert r.returncode >= 0, f"killed by signal {-r.returncode}:\n{r.stderr[-3000:]}"
    for m in CRASH_MARKERS:
        assert m not in r.stderr and m not in r.stdout, f"{m!r} in output:\n{r.stderr[-3000:]}"
