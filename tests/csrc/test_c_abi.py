"""The C ABI (csrc/): build libgboost.so and the C++ example into a tmp dir, run them against a tiny
random Qwen2 checkpoint, and compare with the Python engine.

Two hosts are exercised:
  * the C++ example (csrc/examples/solve.cpp) as a subprocess: gboost starts the interpreter itself,
    calls come from several std::threads, gboost_shutdown finalises Python;
  * this pytest process through ctypes: Python is already initialised, gboost adopts it.
Skipped when there is no C/C++ compiler, make, or python-config for this interpreter.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest

from _abi import CSRC, SECRET, assert_no_crash, engine_config, reference, run_example


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


def _adapter_dir(d, seed=0):
    """A peft-layout LoRA adapter on the tiny checkpoint's q_proj of both layers."""
    import torch
    from safetensors.torch import save_file
    d.mkdir()
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                       "target_modules": ["q_proj"]}))
    g = torch.Generator().manual_seed(seed)
    t = {}
    for i in range(2):
        key = f"base_model.model.model.layers.{i}.self_attn.q_proj"
        t[f"{key}.lora_A.weight"] = torch.randn(2, 64, generator=g)
        t[f"{key}.lora_B.weight"] = torch.randn(64, 2, generator=g) * 3
    save_file(t, str(d / "adapter_model.safetensors"))
    return d


def test_handle_with_an_unmerged_adapter_runs_proxy_fusion_from_one_copy(tiny_ckpt, tmp_path):
    """"slm_adapter" with "base" the SLM's own checkpoint: one resident copy, the delta on the SLM's rows."""
    ad = _adapter_dir(tmp_path / "adapter")
    EngineHandle = _glue().EngineHandle
    h = EngineHandle(json.dumps(engine_config(tiny_ckpt, base=str(tiny_ckpt), slm_adapter=str(ad),
                                              slm_adapter_mode="unmerged")))
    try:
        eng = h.stack.engine
        assert eng.role("slm").model is eng.role("base").model and eng.role("slm").adapter == str(ad)
        out = json.loads(h.solve("What is 2+2?", json.dumps({"method": "fusion", "fusion_rule": "proxy"})))
        assert out["steps"] and out["cost"]["base_tokens"] > 0
    finally:
        h.close()
    with pytest.raises(ValueError, match="adapter_mode='sideways'"):
        EngineHandle(json.dumps(engine_config(tiny_ckpt, slm_adapter=str(ad), slm_adapter_mode="sideways")))


def test_lora_modules_are_named_per_call(tiny_ckpt, tmp_path):
    """"lora_modules" installs adapters on the SLM's one copy; a call's "adapter" picks one."""
    EngineHandle = _glue().EngineHandle
    mods = {"a": str(_adapter_dir(tmp_path / "a", 1)), "b": str(_adapter_dir(tmp_path / "b", 2))}
    h = EngineHandle(json.dumps(engine_config(tiny_ckpt, lora_modules=mods)))
    try:
        gen = {a: json.loads(h.generate("hello", json.dumps({"max_tokens": 6, **({"adapter": a} if a else {})})))
               for a in (None, "a", "b")}
        assert len({tuple(g["token_ids"]) for g in gen.values()}) == 3
        out = json.loads(h.solve("What is 2+2?", json.dumps({"method": "slm", "adapter": "a"})))
        assert out["steps"]
        with pytest.raises(KeyError, match="no LoRA adapter 'c'"):
            h.generate("hello", json.dumps({"adapter": "c"}))
    finally:
        h.close()
    with pytest.raises(ValueError, match="'lora_modules' must be an object"):
        EngineHandle(json.dumps(engine_config(tiny_ckpt, lora_modules=["a"])))


def test_issue_32_searches_through_the_handle(tiny_ckpt):
    """rsd@N and the tree of widened solutions, as overrides of a solve call."""
    EngineHandle = _glue().EngineHandle
    h = EngineHandle(json.dumps(engine_config(tiny_ckpt, search={"num_simulations": 3, "max_depth": 2,
                                                                 "max_step_tokens": 6, "rsd_chains": 3, "seed": 1})))
    try:
        out = json.loads(h.solve("What is 2+2?", json.dumps({"method": "rsd", "rsd_chains": 3,
                                                             "final_choice": "weighted_vote", "include_tree": True})))
        firsts = [n for n in out["tree"]["nodes"] if n["parent"] == out["tree"]["root"] and not n["pruned"]]
        assert len(firsts) == 3
        out = json.loads(h.solve("What is 2+2?", json.dumps({"simulate_to_terminal": True, "widen_to": 4,
                                                             "greedy_first_child": True})))
        assert out["stats"]["solutions"] >= 1 and out["steps"]
    finally:
        h.close()


def test_handle_runs_quantized_weights(tiny_ckpt):
    """"weights": every resident model's linears in that format; an unknown one is a clear error."""
    EngineHandle = _glue().EngineHandle
    h = EngineHandle(json.dumps(engine_config(tiny_ckpt, weights="int4")))
    try:
        assert set(h.stack.engine.weight_formats.values()) == {"int4"}
        out = json.loads(h.generate("hello", json.dumps({"max_tokens": 4})))
        assert out["token_ids"]
    finally:
        h.close()
    with pytest.raises(ValueError, match="weights='int3': choose one of"):
        EngineHandle(json.dumps(engine_config(tiny_ckpt, weights="int3")))
