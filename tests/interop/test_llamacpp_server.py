"""`gboost solve` against a real third-party OpenAI server: llama-cpp-python's (the `interop`
extra), serving the demo 0.5B GGUF on 127.0.0.1 as the general LLM. Opt-in: `pytest -m interop`.

It takes token strings, not ids, so the completions path runs in text mode (engine/llm/textprompt.py);
the chat path writes delegated steps. Each case runs the CLI as a user does and appends what it
did (answer, LLM tokens, wall time) to $GBOOST_INTEROP_OUT (default: a file in the test's tmp dir)
for benchmarks/RESULTS.md. The server is killed at the end, and once mid-solve on purpose.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

pytestmark = [pytest.mark.interop, pytest.mark.timeout(1500)]

SLM = "qwen2.5-coder-0.5b"
QUESTION = "Tom has 3 boxes with 4 apples in each box. He eats 2 apples. How many apples are left?"
ANSWER = "10"
SMALL = {"num_simulations": 2, "max_depth": 4, "max_step_tokens": 40, "seed": 0, "temperature": 0.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(gguf: str, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--host", "127.0.0.1",
                             "--port", str(port), "--n_ctx", "4096", "--n_threads", "2"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited with {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                return proc if r.status == 200 else proc
        except OSError:
            time.sleep(1)
    _stop(proc)
    raise RuntimeError("llama_cpp.server did not answer /v1/models within 180 s")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server():
    pytest.importorskip("llama_cpp.server", reason="pip install -e '.[interop]' (llama-cpp-python[server])")
    from gboost.models.registry import model_path
    gguf = str(model_path(SLM))
    port = _free_port()
    srv = {"url": f"http://127.0.0.1:{port}/v1", "proc": _start(gguf, port)}
    try:
        models = json.load(urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=10))
        srv["model"] = models["data"][0]["id"]
        yield srv
    finally:
        _stop(srv["proc"])


@pytest.fixture(scope="module")
def record(tmp_path_factory):
    out = os.environ.get("GBOOST_INTEROP_OUT") or str(tmp_path_factory.mktemp("interop") / "interop.jsonl")

    def write(**row):
        with open(out, "a") as f:
            f.write(json.dumps(row) + "\n")
    return write


def _config(tmp_path, **kw) -> str:
    p = tmp_path / "cfg.json"
    p.write_text(json.dumps({**SMALL, **kw}))
    return str(p)


def _solve(server, cfg: str, *extra, timeout=600, kill_after=None):
    """The CLI's JSON answer, its one-line prompt-mode note, wall seconds. ``kill_after``: kill the
    server that many seconds after the start-up probe has passed (its note is printed)."""
    cmd = [sys.executable, "-m", "gboost.cli", "solve", "--slm", SLM, "--llm", server["url"], "--config", cfg,
           "--json", "--max-draft", "8", *extra, QUESTION]
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    head = ""
    if kill_after is not None:
        for line in p.stderr:  # the probe passed: the search is about to call the LLM
            head += line
            if line.startswith("general LLM at "):
                break
        time.sleep(kill_after)
        _stop(server["proc"])
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        out, err = p.communicate()
        pytest.fail(f"gboost solve did not end within {timeout} s: {(head + err)[-1500:]}")
    err = head + err
    wall = time.perf_counter() - t0
    assert p.returncode == 0, err[-2000:]
    note = [ln for ln in err.splitlines() if ln.startswith("general LLM at ")]
    return json.loads(out.strip().splitlines()[-1]), note, wall


@pytest.mark.parametrize("name,extra,cfg", [
    ("fusion", (), {"method": "fusion"}),
    ("gboost exact", ("--collab-mode", "exact"), {"method": "gboost"}),
    ("gboost speculative", ("--collab-mode", "speculative"), {"method": "gboost"}),
])
def test_completions_path_in_text_mode(server, record, tmp_path, name, extra, cfg):
    res, note, wall = _solve(server, _config(tmp_path, **cfg), "--llm-kind", "completions", *extra)
    assert note and "prompts as text (token ids refused: field 'prompt', HTTP 500)" in note[0]
    cost = res["cost"]
    assert cost["llm_calls"] > 0 and not cost.get("llm_faults") and cost.get("llm_retries", 0) == 0
    record(case=name, answer=res["answer"], right=res["answer"] == ANSWER, llm_tokens=cost["llm_tokens"],
           llm_calls=cost["llm_calls"], steps=[s["action"] for s in res["steps"]], wall_s=round(wall, 1),
           note=note[0])


@pytest.mark.parametrize("name,cfg", [
    ("rsd, delegated LLM steps (chat)", {"method": "rsd", "rsd_threshold": 0.9}),
    ("gboost, delegated steps (chat)", {"method": "gboost", "collab_width": 0, "delegate_width": 1}),
])
def test_chat_path(server, record, tmp_path, name, cfg):
    res, _, wall = _solve(server, _config(tmp_path, **cfg), "--llm-kind", "chat", "--llm-model", server["model"])
    cost = res["cost"]
    assert cost["llm_calls"] > 0 and cost["llm_tokens"] > 0 and not cost.get("llm_faults")
    record(case=name, answer=res["answer"], right=res["answer"] == ANSWER, llm_tokens=cost["llm_tokens"],
           llm_calls=cost["llm_calls"], steps=[s["action"] for s in res["steps"]], wall_s=round(wall, 1))


def test_a_server_killed_mid_solve_ends_in_slm_steps_not_a_hang(server, record, tmp_path):
    """Killed 5 s after the start-up probe (the last test of the module: the server stays dead):
    the fused steps that fail fall back to the SLM (--on-llm-fault fallback, the default), each
    after its bounded retries, and the solve still ends with an answer."""
    cfg = _config(tmp_path, method="gboost", num_simulations=6)
    res, _, wall = _solve(server, cfg, "--llm-kind", "completions", "--collab-mode", "exact", kill_after=5)
    cost = res["cost"]
    assert sum(cost["llm_faults"].values()) >= 1 and res["steps"]
    record(case="server killed mid-solve", answer=res["answer"], llm_faults=cost.get("llm_faults"),
           llm_retries=cost.get("llm_retries"), llm_tokens=cost["llm_tokens"], wall_s=round(wall, 1))
