"""The C ABI hosted by this pytest process through ctypes: Python is already initialised and
gboost adopts it (greedy and seeded generations equal the Python engine's; no handle or thread
outlives gboost_engine_free)."""
from __future__ import annotations

import ctypes
import json
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

from _abi import engine_config, reference


# ------------------------------------------------------------------------------------ in-process host
class Lib:
    """ctypes view of libgboost.so (returned strings as raw pointers, freed with gboost_string_free)."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))  # CDLL releases the GIL during calls: gboost must take it itself
        P, S = ctypes.c_void_p, ctypes.c_char_p
        E = ctypes.POINTER(ctypes.c_void_p)
        sig = {"gboost_version": (S, []), "gboost_init": (ctypes.c_int, [S]), "gboost_init_error": (S, []),
               "gboost_shutdown": (None, []), "gboost_engine_create": (P, [S, E]),
               "gboost_generate": (P, [P, S, S, E]), "gboost_solve": (P, [P, S, S, E]),
               "gboost_engine_info": (P, [P, E]), "gboost_string_free": (None, [P]),
               "gboost_engine_free": (None, [P])}
        for name, (res, args) in sig.items():
            f = getattr(lib, name)
            f.restype, f.argtypes = res, args
        self.lib = lib

    def _take(self, ptr) -> str | None:
        if not ptr:
            return None
        try:
            return ctypes.string_at(ptr).decode("utf-8")
        finally:
            self.lib.gboost_string_free(ptr)

    def call(self, name, *args):
        """(result, error) with both strings copied and freed."""
        err = ctypes.c_void_p()
        enc = [a.encode() if isinstance(a, str) else a for a in args]
        res = getattr(self.lib, name)(*enc, ctypes.byref(err))
        return self._take(res), self._take(err.value)


@pytest.fixture(scope="module")
def inproc(built):
    if not sysconfig.get_config_var("Py_ENABLE_SHARED"):
        pytest.skip("this Python links libpython statically: loading libgboost.so would load a second interpreter")
    return Lib(built["lib"])


def test_in_process_host_interpreter(inproc, tiny_ckpt, py_engine):
    lib = inproc.lib
    assert lib.gboost_version() == b"0.1.0"
    eng, err = inproc.call("gboost_engine_create", json.dumps(engine_config(tiny_ckpt)))
    assert err == "gboost: call gboost_init first" and eng is None
    assert lib.gboost_init(None) == 0
    assert lib.gboost_init(b"/ignored/when/python/runs") == 0  # reference counted, host interpreter adopted
    try:
        err = ctypes.c_void_p()
        h = lib.gboost_engine_create(json.dumps(engine_config(tiny_ckpt)).encode(), ctypes.byref(err))
        assert h and not err.value
        try:
            _run_in_process_checks(inproc, h, py_engine)
        finally:
            lib.gboost_engine_free(h)
        import gc

        gc.collect()
        leaked = [type(o).__name__ for o in gc.get_objects() if type(o).__name__ in ("EngineHandle", "Stack")]
        assert not leaked, "gboost_engine_free left the handle / stack alive"
        assert not [t for t in threading.enumerate() if t.name == "gboost-capi-loop"]
    finally:
        lib.gboost_shutdown()
        lib.gboost_shutdown()
    assert lib.gboost_init(None) == -2  # final shutdown: no restart
    # the host's interpreter is still alive and usable
    assert sum(range(4)) == 6


def _run_in_process_checks(inproc, h, py_engine):
    # greedy and seeded sampling: same tokens as Engine.generate
    for params in ({"max_tokens": 9}, {"temperature": 0.9, "top_k": 40, "top_p": 0.9, "max_tokens": 9, "seed": 5}):
        res, err = inproc.call("gboost_generate", h, "The answer is", json.dumps(params))
        assert err is None, err
        out = json.loads(res)
        assert out["token_ids"] == reference(py_engine, "The answer is", **params)
        assert out["finish_reason"] in ("stop", "length") and out["seconds"] >= 0

    # stop_token_ids and max_tokens=0
    first = json.loads(inproc.call("gboost_generate", h, "xyz", '{"max_tokens": 5}')[0])["token_ids"]
    out = json.loads(inproc.call("gboost_generate", h, "xyz", json.dumps({"max_tokens": 5,
                                                                          "stop_token_ids": [first[0]]}))[0])
    assert out["token_ids"] == first[:1] and out["finish_reason"] == "stop"
    assert json.loads(inproc.call("gboost_generate", h, "xyz", '{"max_tokens": 0}')[0])["token_ids"] == []

    # errors become messages
    cases = [("gboost_generate", (h, "hi", "[1, 2]"), "params_json: must be a JSON object"),
             ("gboost_generate", (h, "hi", '{"max_token": 3}'), "unknown key(s) max_token"),
             ("gboost_generate", (h, "hi", '{"role": "judge"}'), "no model for role 'judge'"),
             ("gboost_generate", (h, "", None), "prompt is empty"),
             ("gboost_generate", (h, None, None), "the text argument is NULL"),
             ("gboost_generate", (None, "hi", None), "engine is NULL"),
             ("gboost_solve", (h, "q", '{"method": "mcts"}'), "ConfigError: method='mcts'"),
             ("gboost_solve", (h, "q", '{"include_tree": 1}'), "include_tree"),
             ("gboost_solve", (h, "q", "{bad"), "overrides_json: invalid JSON")]
    for fn, args, needle in cases:
        res, err = inproc.call(fn, *args)
        assert res is None and err is not None and needle in err, (fn, args, err)
        assert "Traceback" not in err

    # solve with overrides and the tree; every call's work lands on the handle's backend-wide record
    before = json.loads(inproc.call("gboost_engine_info", h)[0])["backend_cost"]
    res, err = inproc.call("gboost_solve", h, "What is 1 + 1?", '{"num_simulations": 1, "include_tree": true}')
    assert err is None, err
    out = json.loads(res)
    assert out["stats"]["simulations"] == 1 and "tree" in out and out["steps"]
    after = json.loads(inproc.call("gboost_engine_info", h)[0])["backend_cost"]
    for k in ("slm_tokens", "llm_tokens", "prm_tokens"):
        assert after[k] > before[k] and out["cost"][k] > 0, (k, before, after, out["cost"])

    # several host threads at once on one handle: all succeed, forward passes were batched
    results, lock = [], threading.Lock()

    def worker(kind, i):
        if kind == "gen":
            r = inproc.call("gboost_generate", h, f"prompt {i}", '{"max_tokens": 8}')
        else:
            r = inproc.call("gboost_solve", h, f"question {i}", '{"method": "bon", "bon_n": 2}')
        with lock:
            results.append((kind, i, r))

    threads = [threading.Thread(target=worker, args=("gen", i)) for i in range(4)]
    threads += [threading.Thread(target=worker, args=("solve", i)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(results) == 6
    for kind, i, (res, err) in results:
        assert err is None and res, (kind, i, err)
        if kind == "gen":
            assert json.loads(res)["token_ids"] == reference(py_engine, f"prompt {i}", max_tokens=8)
    info = json.loads(inproc.call("gboost_engine_info", h)[0])
    assert info["scheduler_max_batch"] > 1
    assert info["python"]["prefix"] == sys.prefix  # the host's own interpreter
