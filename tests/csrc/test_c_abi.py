"""The C ABI (csrc/): build libgboost.so and the C++ example into a tmp dir, run them against a tiny
random Qwen2 checkpoint, and compare with the Python engine.

Two hosts are exercised:
  * the C++ example (csrc/examples/solve.cpp) as a subprocess: gboost starts the interpreter itself,
    calls come from several std::threads, gboost_shutdown finalises Python;
  * this pytest process through ctypes: Python is already initialised, gboost adopts it.
Skipped when there is no C/C++ compiler, make, or python-config for this interpreter.
"""
from __future__ import annotations

import ctypes
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import threading
from pathlib import Path

import pytest

CSRC = Path(__file__).resolve().parents[2] / "csrc"
CRASH_MARKERS = ("Traceback", "Segmentation fault", "Fatal Python error", "core dumped", "Aborted")
SECRET = "sk-gboosttestsecret0123456789"


def _python_config() -> str | None:
    exe = Path(sys.executable)
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    for cand in (Path(f"{exe}-config"), exe.with_name(f"python{ver}-config"), exe.with_name("python3-config")):
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    return None


def _tools_or_skip() -> str:
    for tool in ("gcc", "g++", "make"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found: cannot build the C ABI")
    cfg = _python_config()
    if cfg is None:
        pytest.skip(f"no python-config next to {sys.executable}: cannot build the C ABI")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").is_file():
        pytest.skip("Python.h not found (no Python development headers)")
    return cfg


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """libgboost.so + gboost_example, built with csrc/Makefile into a tmp dir (never into the repo)."""
    pycfg = _tools_or_skip()
    build = tmp_path_factory.mktemp("gboost-capi-build")
    before = sorted(CSRC.rglob("*"))
    r = subprocess.run(["make", "-C", str(CSRC), f"BUILD={build}", f"PYTHON={sys.executable}",
                        f"PYTHON_CONFIG={pycfg}", "CC=gcc", "CXX=g++", "CFLAGS=-O1 -Werror",
                        "CXXFLAGS=-O1 -Werror"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, f"build failed:\n{r.stdout}\n{r.stderr}"
    lib, exe = build / "libgboost.so", build / "gboost_example"
    assert lib.is_file() and exe.is_file()
    assert sorted(CSRC.rglob("*")) == before, "the build wrote into the source tree"
    return {"dir": build, "lib": lib, "example": exe}


@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """A tiny random HF Qwen2 directory (safetensors) with the byte-level tokenizer of gboost.testing:
    one token per byte, so the token_pair PRM's defaults ('ки', '+', '-') are single tokens."""
    transformers = pytest.importorskip("transformers")
    import torch

    from gboost.testing import byte_tokenizer

    d = tmp_path_factory.mktemp("tiny-qwen2-capi")
    torch.manual_seed(0)
    cfg = transformers.Qwen2Config(vocab_size=300, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                                   bos_token_id=256, eos_token_id=256, tie_word_embeddings=False)
    model = transformers.Qwen2ForCausalLM(cfg)
    with torch.no_grad():
        for p in model.parameters():  # peakier than the default init: distinct greedy tokens
            p.normal_(0, 0.3)
    model.save_pretrained(str(d), safe_serialization=True)
    byte_tokenizer().backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>"}))
    return d


def engine_config(ckpt: Path, **kw) -> dict:
    cfg = {"slm": str(ckpt), "llm": str(ckpt), "prm": None, "prm_kind": "token_pair", "dtype": "float32",
           "kv_memory_gb": 0.05, "collab_mode": "speculative",
           "search": {"num_simulations": 2, "max_depth": 2, "max_step_tokens": 8, "seed": 3}}
    cfg.update(kw)
    return cfg


@pytest.fixture(scope="module")
def py_engine(tiny_ckpt):
    """The same checkpoint in the Python engine, for reference generations."""
    from gboost.engine import Engine

    return Engine.from_pretrained(str(tiny_ckpt), dtype="float32", kv_memory_bytes=8 << 20)


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


# ------------------------------------------------------------------------------------ the build
def test_library_exports_only_the_c_abi(built):
    if shutil.which("nm") is None:
        pytest.skip("nm not found")
    out = subprocess.run(["nm", "-D", "--defined-only", str(built["lib"])], capture_output=True, text=True,
                         check=True).stdout
    syms = {line.split()[-1] for line in out.splitlines() if line.split() and line.split()[-2] in "TDBR"}
    expected = {"gboost_version", "gboost_status_string", "gboost_init", "gboost_init_error", "gboost_shutdown",
                "gboost_engine_create", "gboost_generate", "gboost_solve", "gboost_engine_info",
                "gboost_string_free", "gboost_engine_free"}
    assert expected <= syms
    assert not [s for s in syms - expected if not s.startswith("_")], "unexpected exported symbols"


def test_header_is_plain_c(built, tmp_path):
    """gboost.h compiles as strict C89 (no C++ types) and as C++ (extern "C")."""
    src = tmp_path / "t.c"
    src.write_text('#include "gboost.h"\nint main(void) { return gboost_version() == 0; }\n')
    for cc, std in (("gcc", "-std=c89"), ("g++", "-std=c++11")):
        r = subprocess.run([cc, std, "-pedantic", "-Wall", "-Werror", "-x", "c" if cc == "gcc" else "c++",
                            f"-I{CSRC}", str(src), "-o", str(tmp_path / f"t_{cc}"), f"-L{built['dir']}",
                            "-lgboost", f"-Wl,-rpath,{built['dir']}"], capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        assert subprocess.run([str(tmp_path / f"t_{cc}")]).returncode == 0


# ------------------------------------------------------------------------------------ C++ host
def test_example_two_threads_generate_and_solve(built, tiny_ckpt, py_engine, engine_device):
    if engine_device != "cpu":  # the handle's engine on CUDA, against the Python engine there
        from gboost.engine import Engine
        py_engine = Engine.from_pretrained(str(tiny_ckpt), dtype="float32", device=engine_device,
                                           kv_memory_bytes=8 << 20)
    params = {"temperature": 0.0, "max_tokens": 12}
    r, lines = run_example(built, engine_config(tiny_ckpt, device=engine_device), "--prompt", "Step 1: 2 + 3 =",
                           "--params", json.dumps(params), "--solve", 1, "--generate", 1)
    assert_no_crash(r)
    assert r.returncode == 0, r.stdout + r.stderr
    by_call = {}
    for line in lines:
        by_call.setdefault(line["call"], []).append(line)
    assert by_call["init"][0]["ok"] and by_call["init"][0]["version"] == "0.1.0"
    info = by_call["create"][0]["result"]
    assert info["roles"] == {"slm": str(tiny_ckpt), "llm": str(tiny_ckpt), "prm": str(tiny_ckpt)}
    assert info["python"]["prefix"] == sys.prefix
    assert "shims" not in info["python"]["executable"]

    gen = by_call["generate"][0]
    assert gen["ok"], gen
    want = reference(py_engine, "Step 1: 2 + 3 =", **params)
    assert gen["result"]["token_ids"] == want
    assert set(gen["result"]) >= {"text", "token_ids", "seconds", "finish_reason", "prompt_tokens"}

    sol = by_call["solve"][0]
    assert sol["ok"], sol
    res = sol["result"]
    assert {"answer", "steps", "cost", "text", "method", "score", "stats"} <= set(res)
    assert res["method"] == "gboost" and res["steps"]
    assert all(set(s) == {"text", "action", "reward"} for s in res["steps"])
    assert res["cost"]["slm_tokens"] > 0 and res["cost"]["prm_tokens"] > 0


def test_example_concurrent_calls_all_succeed(built, tiny_ckpt, py_engine):
    """2 solves + 3 generates at once on one handle (5 host threads); a second solve run with the
    same seed gives the same answer."""
    params = {"max_tokens": 10}
    r, lines = run_example(built, engine_config(tiny_ckpt, search={"method": "beam", "beam_width": 2,
                                                                   "max_depth": 2, "max_step_tokens": 6}),
                           "--prompt", "abc", "--params", json.dumps(params), "--solve", 2, "--generate", 3)
    assert_no_crash(r)
    assert r.returncode == 0, r.stdout + r.stderr
    gens = [x for x in lines if x["call"] == "generate"]
    sols = [x for x in lines if x["call"] == "solve"]
    assert len(gens) == 3 and len(sols) == 2 and all(x["ok"] for x in gens + sols)
    want = reference(py_engine, "abc", **params)
    assert all(g["result"]["token_ids"] == want for g in gens)
    assert all(s["result"]["method"] == "beam" and s["result"]["steps"] for s in sols)
    assert sols[0]["result"]["text"] == sols[1]["result"]["text"]


def test_example_errors_are_messages_not_crashes(built, tiny_ckpt):
    # bad JSON: fails before anything heavy is imported
    r, lines = run_example(built, "{not json")
    assert_no_crash(r)
    assert r.returncode == 2
    err = lines[-1]
    assert err["call"] == "create" and not err["ok"]
    assert err["error"].startswith("ValueError: config_json: invalid JSON")

    # missing model directory, unknown key, bad search field
    missing = tiny_ckpt.parent / "does-not-exist"
    for cfg, needle in ((engine_config(missing), str(missing)),
                        ({**engine_config(tiny_ckpt), "sIm": "x"}, "unknown key(s) sIm"),
                        (engine_config(tiny_ckpt, search={"num_simulatons": 3}), "num_simulations")):
        r, lines = run_example(built, cfg)
        assert_no_crash(r)
        assert r.returncode == 2, r.stdout + r.stderr
        assert not lines[-1]["ok"] and needle in lines[-1]["error"], lines[-1]

    # a failing call (bad params) is reported, the other thread's call still succeeds
    r, lines = run_example(built, engine_config(tiny_ckpt), "--params", '{"temperature": -1}',
                           "--overrides", '{"method": "slm"}')
    assert_no_crash(r)
    assert r.returncode == 1
    gen = next(x for x in lines if x["call"] == "generate")
    sol = next(x for x in lines if x["call"] == "solve")
    assert not gen["ok"] and "temperature must be >= 0" in gen["error"]
    assert sol["ok"] and sol["result"]["method"] == "slm"


def test_example_python_home_or_interpreter(built, tmp_path):
    r, lines = run_example(built, "{}", "--python", "/nonexistent/python-home")
    assert_no_crash(r)
    assert r.returncode == 2
    assert lines[-1]["call"] == "init" and lines[-1]["status"] == -3
    assert "/nonexistent/python-home does not exist" in lines[-1]["error"]

    r, lines = run_example(built, "{}", "--python", str(tmp_path))  # a directory that is no Python home
    assert r.returncode == 2 and lines[-1]["status"] == -3 and "is not a Python" in lines[-1]["error"]

    # a real home directory and a real interpreter both start Python (the bad config then fails fast)
    for where in (sys.base_prefix, sys.executable):
        r, lines = run_example(built, "{bad", "--python", where)
        assert_no_crash(r)
        assert r.returncode == 2 and lines[0] == {"call": "init", "ok": True, "version": "0.1.0"}, r.stdout
        assert lines[-1]["error"].startswith("ValueError: config_json: invalid JSON")


def test_remote_llm_error_has_no_credentials(built, tiny_ckpt):
    """An unreachable remote LLM (URL with user:password, API key in the environment) fails engine
    creation with a message that contains neither secret."""
    cfg = engine_config(tiny_ckpt, llm=f"http://user:{SECRET}pw@127.0.0.1:9/v1", llm_timeout_s=1.0)
    r, lines = run_example(built, cfg, env_extra={"GBOOST_LLM_API_KEY": SECRET})
    assert_no_crash(r)
    assert r.returncode == 2
    msg = lines[-1]["error"]
    assert msg and SECRET not in msg and SECRET not in r.stdout and SECRET not in r.stderr
    assert "http://***@127.0.0.1:9" in msg  # the message is still useful


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


# ------------------------------------------------------------------------------------ the glue alone
def _glue():
    """gboost_capi.py as a fresh module (compiled by hand: no __pycache__ left in csrc/)."""
    import types

    path = CSRC / "gboost_capi.py"
    mod = types.ModuleType("_gboost_capi_test")
    mod.__file__ = str(path)
    exec(compile(path.read_text(encoding="utf-8"), str(path), "exec"), mod.__dict__)
    return mod


def test_error_messages_are_redacted(monkeypatch):
    g = _glue()
    monkeypatch.setenv("GBOOST_LLM_API_KEY", SECRET)
    msgs = [g.error_message(RuntimeError(f"request to http://u:{SECRET}@h/v1 failed")),
            g.error_message(ValueError(f"header Authorization: Bearer {SECRET}")),
            g.error_message(OSError(f"api_key={SECRET} rejected")),
            g.error_message(KeyError("no model for role 'x'"))]
    assert all(SECRET not in m for m in msgs), msgs
    assert msgs[0].startswith("RuntimeError: request to http://***@h/v1")
    assert msgs[3] == "KeyError: no model for role 'x'"
    assert g._dumps({"x": float("nan"), "y": [float("inf"), 1.5]}) == '{"x": null, "y": [null, 1.5]}'


def test_handle_with_a_base_model_runs_proxy_fusion(tiny_ckpt):
    """The engine config's "base" loads the SLM's base model; a proxy-fusion solve then charges it."""
    EngineHandle = _glue().EngineHandle
    h = EngineHandle(json.dumps(engine_config(tiny_ckpt, base=str(tiny_ckpt))))
    try:
        assert json.loads(h.info())["roles"]["base"] == str(tiny_ckpt)
        out = json.loads(h.solve("What is 2+2?", json.dumps({"method": "fusion", "fusion_rule": "proxy"})))
        assert out["steps"] and out["cost"]["base_tokens"] > 0
    finally:
        h.close()
    with pytest.raises(ValueError, match="'base' must be a string or null"):
        EngineHandle(json.dumps(engine_config(tiny_ckpt, base=3)))
