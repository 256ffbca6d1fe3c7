"""The gboost command line, run as a user would, on a tiny checkpoint written to disk."""
import json
import subprocess
import sys
from contextlib import contextmanager

import pytest

from gboost.testing import run_cli as gboost, write_tiny_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    """A Hugging Face style directory: config.json, model.safetensors, tokenizer.json."""
    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny-hf"), seed=1)


def test_generate_json_matches_the_engine(tiny_dir):
    out = json.loads(gboost("generate", "--model", tiny_dir, "--max-tokens", 12, "--dtype", "float32",
                            "--json", "Hello").stdout)
    assert set(out) >= {"text", "token_ids", "seconds"} and len(out["token_ids"]) <= 12
    from gboost.engine import Engine
    from gboost.sampling import SamplingParams
    eng = Engine.from_pretrained(str(tiny_dir), dtype="float32")
    tok = eng.role("slm").tokenizer
    ref = eng.generate([tok.encode("Hello")], SamplingParams(temperature=0.0, max_tokens=12))[0]
    assert out["token_ids"] == ref.token_ids and out["text"] == ref.text


def test_solve_json_and_trace(tiny_dir, tmp_path):
    trace = tmp_path / "tree.json"
    p = gboost("solve", "--slm", tiny_dir, "--llm", tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32",
               "--config", _cfg(tmp_path), "--seed", 3, "--trace", trace, "--json", "What is 2+2?")
    out = json.loads(p.stdout)
    assert out["steps"] and {s["action"] for s in out["steps"]} <= {"slm", "collab"}
    assert all(0.0 <= s["reward"] <= 1.0 for s in out["steps"])
    assert out["cost"]["slm_tokens"] > 0 and out["cost"]["prm_tokens"] > 0
    html = tmp_path / "tree.html"
    gboost("trace", trace, "--out", html)
    assert "<svg" in html.read_text()
    # human-readable mode prints each step as it is decided, then the answer
    p = gboost("solve", "--slm", tiny_dir, "--llm", tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32",
               "--config", _cfg(tmp_path), "--method", "slm", "What is 2+2?")
    assert "[step 1 · slm · reward" in p.stdout and "answer:" in p.stdout


def _cfg(tmp_path):
    f = tmp_path / "search.json"
    f.write_text(json.dumps({"num_simulations": 2, "max_step_tokens": 8, "max_depth": 3}))
    return f


def test_bad_inputs_give_clear_errors(tiny_dir, tmp_path):
    p = gboost("generate", "--model", tmp_path / "nope", "x", check=False)
    assert p.returncode == 2 and "error:" in p.stderr and "Traceback" not in p.stderr
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"num_simulatons": 3}))
    p = gboost("solve", "--slm", tiny_dir, "--llm", "none", "--config", bad, "q", check=False)
    assert p.returncode == 2 and "num_simulatons" in p.stderr
    p = gboost("generate", "--model", tiny_dir, "--dtype", "float32", "--max-tokens", 4, "x" * 2000, check=False)
    assert p.returncode == 2 and "exceeds" in p.stderr


def test_proxy_fusion_needs_and_uses_a_base_model(tiny_dir, tmp_path):
    cfg = tmp_path / "proxy.json"
    cfg.write_text(json.dumps({"fusion_rule": "proxy", "fusion_alpha": 1.0, "max_step_tokens": 6, "max_depth": 2}))
    models = ("--slm", tiny_dir, "--llm", tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32")
    p = gboost("solve", *models, "--method", "fusion", "--config", cfg, "q", check=False)
    assert p.returncode == 2 and "--base" in p.stderr and "Traceback" not in p.stderr
    p = gboost("solve", *models, "--llm", "none", "--method", "fusion", "q", check=False)
    assert p.returncode == 2 and "needs a general LLM" in p.stderr
    out = json.loads(gboost("solve", *models, "--base", tiny_dir, "--method", "fusion", "--config", cfg,
                            "--json", "What is 2+2?").stdout)
    assert out["steps"] and out["cost"]["base_tokens"] > 0 and out["cost"]["llm_tokens"] > 0


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(srv, url):
    """Polls /health until the server subprocess answers 200; fails with its stderr if it exits first."""
    import time

    import httpx
    for _ in range(600):
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            time.sleep(0.1)
        assert srv.poll() is None, srv.stderr.read()
    raise AssertionError(f"{url}/health never answered 200")


@contextmanager
def served(*args):
    """`gboost serve ARGS --port P` in a subprocess on 127.0.0.1; yields its URL once /health answers."""
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "gboost.cli", "serve", *map(str, args), "--port", str(port)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_healthy(srv, url)
        yield url
    finally:
        srv.terminate()
        srv.wait(timeout=30)


def test_serve_then_solve_against_it(tiny_dir, tmp_path):
    """`gboost serve` in a subprocess on 127.0.0.1, used by `gboost solve --llm http://...`."""
    import httpx
    with served("--model", tiny_dir, "--dtype", "float32") as url:
        r = httpx.post(url + "/v1/completions", json={"prompt": [1, 2, 3], "max_tokens": 3, "logprobs": 2,
                                                      "temperature": 0}, timeout=30)
        assert r.status_code == 200 and len(r.json()["choices"][0]["logprobs"]["tokens"]) == 3
        r = httpx.post(url + "/v1/completions", content=b"{not json", timeout=30,
                       headers={"content-type": "application/json"})
        assert r.status_code in (400, 422) and "error" in r.json()
        p = gboost("solve", "--slm", tiny_dir, "--llm", url + "/v1", "--prm-kind", "token_pair", "--dtype",
                   "float32", "--config", _cfg(tmp_path), "--method", "fusion", "--json", "What is 2+2?")
        out = json.loads(p.stdout)
        assert out["steps"] and all(s["action"] == "collab" for s in out["steps"])
        assert out["cost"]["llm_calls"] == len(out["steps"]) and not out["cost"]["llm_faults"]


def test_serve_solve_answers_like_the_solve_command(tiny_dir, tmp_path):
    """`gboost serve --solve`: /v1/solve (JSON and SSE) gives what `gboost solve --json` gives."""
    import httpx
    models = ("--slm", tiny_dir, "--llm", tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32",
              "--config", _cfg(tmp_path))
    p = gboost("solve", *models, "--seed", 4, "--json", "What is 2+2?")
    want = json.loads(p.stdout)
    with served("--solve", *models) as url:
        r = httpx.post(url + "/v1/solve", json={"question": "What is 2+2?", "seed": 4}, timeout=120)
        assert r.status_code == 200, r.text
        got = r.json()
        assert (got["answer"], got["steps"]) == (want["answer"], want["steps"])
        r = httpx.post(url + "/v1/solve", json={"question": "What is 2+2?", "seed": 4, "stream": True},
                       timeout=120)
        events = [json.loads(b[6:]) for b in r.text.split("\n\n") if b.startswith("data: {")]
        assert [e["object"] for e in events] == ["solve.step"] * len(want["steps"]) + ["solve.result"]
        assert events[-1]["steps"] == want["steps"]
        # a question longer than the model's 1024 positions: a clear 400, and the server lives on
        r = httpx.post(url + "/v1/solve", json={"question": "x" * 1500}, timeout=120)
        assert r.status_code == 400 and r.json()["error"]["code"] == "question_too_long", r.text
        r = httpx.post(url + "/v1/solve", json={"question": "What is 2+2?", "config": {"widths": 2}}, timeout=30)
        assert r.status_code == 400 and "widths" in r.json()["error"]["message"]
        r = httpx.post(url + "/v1/completions", json={"prompt": [1, 2], "max_tokens": 2}, timeout=30)
        assert r.status_code == 200
        assert httpx.post(url + "/v1/solve", json={"question": "What is 2+2?", "seed": 4},
                          timeout=120).json()["steps"] == want["steps"]


def test_eval_out_then_resume(tiny_dir, tmp_path):
    data = tmp_path / "gsm.jsonl"
    data.write_text("\n".join(json.dumps({"question": f"What is {i} + 1?", "answer": f"#### {i + 1}"})
                              for i in range(3)))
    conf = tmp_path / "c.json"
    conf.write_text(json.dumps({"max_step_tokens": 6, "max_depth": 2, "score_baselines": False}))
    out = tmp_path / "runs.jsonl"
    common = ["eval", "--data", data, "--slm", tiny_dir, "--llm", "none", "--method", "slm", "--dtype", "float32", "--prm-kind", "token_pair",
              "--config", conf, "--out", out, "--json"]
    first = json.loads(gboost(*common, "--limit", 2).stdout)
    assert first["n"] == 2 and first["resumed"] == 0
    again = json.loads(gboost(*common, "--resume").stdout)
    assert again["n"] == 3 and again["resumed"] == 2
    assert [json.loads(l)["idx"] for l in out.read_text().splitlines()] == [0, 1, 2]
    p = gboost(*common[:-3], "--resume", check=False)  # no --out
    assert p.returncode != 0 and "--resume needs --out" in p.stderr
    lines = tmp_path / "lines.jsonl"  # --lines: a 1-based range of the file; records keep file positions
    part = json.loads(gboost(*common[:-3], "--out", lines, "--lines", "2-3", "--json").stdout)
    assert part["n"] == 2 and [json.loads(l)["idx"] for l in lines.read_text().splitlines()] == [1, 2]


def test_malloc_tuning_respects_the_environment():
    code = "from gboost.malloc import tune_malloc as t; print(t())"
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith(("MALLOC_", "GBOOST_MALLOC"))}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env).stdout.strip()
    assert out == ("True" if sys.platform.startswith("linux") else "False")
    env["MALLOC_MMAP_THRESHOLD_"] = "65536"   # the user's own setting wins
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env).stdout.strip() == "False"


def test_remote_llm_start_up_errors_are_one_line_and_rc_2(tiny_dir, tmp_path, capsys):
    """A general LLM that cannot be used (nobody listening, 401, another vocabulary) stops
    `gboost solve` with one line naming it, exit status 2, no traceback."""
    from gboost.cli import main
    from gboost.server.app import create_app
    from gboost.server.engine_backend import EngineCompletionBackend
    from gboost.server.uvicorn_server import BackgroundServer
    from gboost.scheduler import Scheduler
    from gboost.testing import tiny_config, tiny_engine
    solve = ("solve", "--slm", tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32", "q")
    # nobody listens: through the real command line, as a user would run it
    p = gboost(*solve, "--llm", f"http://127.0.0.1:{free_port()}/v1", check=False)
    assert p.returncode == 2, p.stderr
    assert p.stderr.strip().count("\n") == 0 and "Traceback" not in p.stderr, p.stderr
    assert p.stderr.startswith("error: general LLM: [connect]") and "127.0.0.1" in p.stderr

    def run(app, needle):
        with BackgroundServer(app) as srv:
            rc = main([*map(str, solve), "--llm", srv.url + "/v1"])
        err = capsys.readouterr().err
        assert rc == 2 and err.count("\n") == 1 and err.startswith("error: general LLM:"), err
        assert needle in err and "Traceback" not in err

    eng = tiny_engine({"slm": 1})
    run(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="m"), api_key="secret"), "HTTP 401")
    small = tiny_engine({"slm": 1}, configs={"slm": tiny_config(vocab=200)})  # 200 logits < 259 tokens
    run(create_app(EngineCompletionBackend(small, Scheduler(small), model_name="m")), "[vocab_mismatch]")


def test_ctrl_c_on_serve_solve_cancels_frees_and_exits_130_with_one_line(tiny_dir, tmp_path):
    """SIGINT while a search runs: the search is cancelled after the grace (its client gets a 503 in
    the error shape), every KV block is free, and the server ends with one line and status 130."""
    import signal
    import threading
    import time

    import httpx
    conf = tmp_path / "long.json"   # a search that would run for minutes
    conf.write_text(json.dumps({"num_simulations": 5000, "max_step_tokens": 16, "max_depth": 50}))
    port = free_port()
    srv = subprocess.Popen([sys.executable, "-m", "gboost.cli", "serve", "--solve", "--slm", tiny_dir, "--llm",
                            tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32", "--config", conf,
                            "--port", str(port), "--shutdown-grace", "0.2"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url, answer = f"http://127.0.0.1:{port}", {}
    try:
        wait_healthy(srv, url)

        def client():
            answer["r"] = httpx.post(url + "/v1/solve", json={"question": "What is 2+2?"}, timeout=120)
        th = threading.Thread(target=client)
        th.start()
        while "gboost_solves_in_flight 1" not in httpx.get(url + "/metrics").text:
            assert th.is_alive() and srv.poll() is None
            time.sleep(0.05)
        srv.send_signal(signal.SIGINT)
        _, err = srv.communicate(timeout=60)
        th.join(60)
    finally:
        if srv.poll() is None:
            srv.kill()
    assert srv.returncode == 130, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("gboost serve: stopped by SIGINT; 1 search still running after the 0.2 s grace "
                           "cancelled;"), last
    assert last.endswith("KV blocks free, 0 sequences live"), last
    free, total = last.split("; ")[-1].split(" KV blocks free")[0].split(" of ")
    assert free == total
    r = answer["r"]
    assert r.status_code == 503 and r.json()["error"]["code"] == "server_shutting_down"


@pytest.mark.parametrize("kind, name, content, want", [
    ("config", "c.json", '{\n  "num_simulations": 2,\n  "max_depth": 3,\n', r"c\.json:4: cannot parse JSON"),
    ("config", "c.json", '{\n  "num_simulations": 2,\n  "uct": 0.1\n}', r"c\.json:3: unknown search config key\(s\): 'uct'"),
    ("config", "c.json", '{\n  "num_simulations": "2"\n}', r"c\.json:2: num_simulations='2': must be an integer"),
    ("config", "c.toml", 'num_simulations = [\n', r"c\.toml:1: cannot parse TOML"),
    ("config", "missing.toml", None, r"config file not found: .*missing\.toml"),
    ("data", "d.jsonl", '{"question": "q", "answer": "#### 1"}\n{"question": "q", "answer":\n',
     r"d\.jsonl:2: invalid JSON"),
    ("data", "d.jsonl", '{"question": "q", "answer": "#### 1"}\n\n{"answer": "#### 2"}\n', r"d\.jsonl:3: unknown row format"),
    ("data", "d.jsonl", '{"question": "q"}\n', r"d\.jsonl:1: unknown row format"),
    ("data", "d.jsonl", "", r"d\.jsonl: file is empty"),
    ("data", "missing.jsonl", None, r"dataset not found: .*missing\.jsonl"),
])
def test_bad_config_and_data_files_are_one_line_and_rc_2(tiny_dir, tmp_path, capsys, kind, name, content, want):
    """`gboost eval` (and solve) refuse a bad --config or --data file before loading any model."""
    import re

    from gboost.cli import main
    f = tmp_path / name
    if content is not None:
        f.write_text(content)
    good_data = tmp_path / "ok.jsonl"
    good_data.write_text('{"question": "What is 1 + 1?", "answer": "#### 2"}\n')
    good_cfg = _cfg(tmp_path)
    args = ["eval", "--data", f if kind == "data" else good_data, "--config", f if kind == "config" else good_cfg,
            "--slm", tiny_dir, "--llm", "none", "--method", "slm", "--prm-kind", "token_pair", "--dtype", "float32"]
    assert main([str(a) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and re.search(want, err), err
    if kind == "config":  # solve reads --config the same way
        assert main([str(a) for a in ("solve", "--config", f, "--slm", tiny_dir, "--llm", "none", "q")]) == 2
        assert re.search(want, capsys.readouterr().err)


@pytest.mark.parametrize("cmd", [("solve", "--llm", "none", "q"), ("generate", "--max-tokens", "2", "q")])
def test_an_out_of_range_seed_is_one_line_and_rc_2(tiny_dir, capsys, cmd):
    """The seed check every route uses (gboost.sampling.check_seed) holds on the command line too."""
    from gboost.cli import main
    model = ("--model", str(tiny_dir)) if cmd[0] == "generate" else ("--slm", str(tiny_dir))
    assert main([cmd[0], *model, "--dtype", "float32", "--seed", str(2**70), *cmd[1:]]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "seed must be an integer in [-2**63, 2**64 - 1]" in err, err


def test_solve_with_a_chat_only_llm_delegates_or_says_why_not(tiny_dir, tmp_path, capsys):
    """`--llm URL --llm-kind chat`: a hosted chat API as the general LLM (tests/mock_chat_api.py)."""
    from gboost.cli import main
    from mock_chat_api import ChatOnlyAPI
    from gboost.scheduler import Scheduler
    from gboost.server.app import create_app
    from gboost.server.engine_backend import EngineCompletionBackend
    from gboost.server.uvicorn_server import BackgroundServer
    from gboost.testing import CHAT_TEMPLATE, tiny_engine
    eng = tiny_engine({"slm": 2}, chat_template=CHAT_TEMPLATE)
    api = ChatOnlyAPI(create_app(EngineCompletionBackend(eng, Scheduler(eng), model_name="m")), model="hosted")
    cfg = tmp_path / "delegate.json"
    cfg.write_text(json.dumps({"num_simulations": 2, "max_step_tokens": 6, "max_depth": 2, "collab_width": 0,
                               "delegate_width": 1}))
    solve = ["solve", "--slm", str(tiny_dir), "--prm-kind", "token_pair", "--dtype", "float32", "--json"]
    with BackgroundServer(api) as srv:
        rc = main([*solve, "--llm", srv.url + "/v1", "--llm-kind", "chat", "--llm-model", "hosted",
                   "--config", str(cfg), "q"])
        out = capsys.readouterr().out
        assert rc == 0 and json.loads(out)["cost"]["llm_calls"] == api.calls - 1 > 0  # the probe is one call
        rc = main([*solve, "--llm", srv.url + "/v1", "--llm-model", "hosted", "--config", str(_cfg(tmp_path)), "q"])
    err = capsys.readouterr().err
    assert rc == 2 and err.count("\n") == 1 and "fused steps" in err and "offers chat" in err \
        and "delegate_width=1" in err, err


@pytest.mark.parametrize("cmd", [["solve", "q"], ["eval", "--data", "DATA"], ["train-prm", "--data", "DATA", "--out", "OUT"]])
def test_max_draft_reaches_the_executor_and_zero_is_refused(tiny_dir, tmp_path, monkeypatch, capsys, cmd):
    import gboost.stack
    from gboost.cli import main
    data = tmp_path / "d.jsonl"
    data.write_text(json.dumps({"question": "1+1?", "answer": "2"}) + "\n")
    cmd = [str(data) if c == "DATA" else str(tmp_path / "out") if c == "OUT" else c for c in cmd]
    seen = []

    async def stop(*a, options=None, **kw):
        seen.append(options)
        raise KeyboardInterrupt  # the CLI's own way out before a stack exists: rc 130
    monkeypatch.setattr(gboost.stack, "build_stack", stop)
    models = ["--slm", str(tiny_dir), "--dtype", "float32"] + (["--llm", "none", "--method", "slm"]
                                                              if cmd[0] != "train-prm" else ["--collab-share", "0"])
    assert main([cmd[0], *models, "--max-draft", "3", "--draft-policy", "adaptive", *cmd[1:]]) == 130
    assert [(o.max_draft, o.draft_policy) for o in seen] == [(3, "adaptive")]
    with pytest.raises(SystemExit) as e:
        main([cmd[0], *models, "--max-draft", "0", *cmd[1:]])
    assert e.value.code == 2 and "--max-draft: must be >= 1, got 0" in capsys.readouterr().err


def test_an_slm_adapter_loads_from_the_cli_and_a_bad_one_is_one_line(tiny_dir, tmp_path):
    import torch
    from safetensors.torch import save_file
    ad = tmp_path / "adapter"
    ad.mkdir()
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                        "target_modules": ["q_proj"], "bias": "none"}))
    g = torch.Generator().manual_seed(0)
    key = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{key}.lora_A.weight": torch.randn(2, 64, generator=g),
               f"{key}.lora_B.weight": torch.randn(64, 2, generator=g)}, str(ad / "adapter_model.safetensors"))
    models = ("--slm", tiny_dir, "--llm", "none", "--prm-kind", "token_pair", "--dtype", "float32", "--method", "slm")
    out = json.loads(gboost("solve", *models, "--slm-adapter", ad, "--json", "What is 2+2?").stdout)
    assert out["steps"]
    # unmerged on one resident base: the same greedy SLM steps as the merged adapter
    same = json.loads(gboost("solve", *models, "--slm-adapter", ad, "--slm-adapter-mode", "unmerged", "--json",
                             "What is 2+2?").stdout)
    assert [s["text"] for s in same["steps"]] == [s["text"] for s in out["steps"]]
    (ad / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4,
                                                        "use_dora": True}))
    p = gboost("solve", *models, "--slm-adapter", ad, "q", check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "DoRA" in p.stderr and str(ad) in p.stderr


def test_serve_lora_modules_refuse_a_bad_spec_or_adapter_in_one_line(tiny_dir, tmp_path):
    p = gboost("serve", "--model", tiny_dir, "--dtype", "float32", "--lora-modules", "noequals", check=False)
    assert p.returncode == 2 and "--lora-modules 'noequals': want NAME=DIR" in p.stderr
    p = gboost("serve", "--model", tiny_dir, "--dtype", "float32", "--lora-modules", f"a={tmp_path / 'none'}",
               check=False)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "no adapter directory there" in p.stderr


def test_issue_32_searches_from_the_cli(tiny_dir, tmp_path):
    """rsd@N and the tree of widened solutions, each from a config file as a user writes one."""
    models = ("--slm", tiny_dir, "--llm", tiny_dir, "--prm-kind", "token_pair", "--dtype", "float32")
    for name, body in (("rsd3", 'method = "rsd"\nrsd_chains = 3\nfinal_choice = "weighted_vote"\n'),
                       ("tree", 'simulate_to_terminal = true\nwiden_to = 4\ngreedy_first_child = true\n')):
        cfg = tmp_path / f"{name}.toml"
        cfg.write_text("[search]\nnum_simulations = 3\nmax_depth = 2\nmax_step_tokens = 6\n" + body)
        out = json.loads(gboost("solve", *models, "--config", cfg, "--json", "What is 2+2?").stdout)
        assert out["steps"], name
        if name == "tree":
            assert out["stats"]["solutions"] >= 1


def test_generate_with_int4_weights_matches_the_engine(tiny_dir):
    out = json.loads(gboost("generate", "--model", tiny_dir, "--max-tokens", 8, "--dtype", "float32",
                            "--weights", "int4", "--json", "Hello").stdout)
    from gboost.engine import Engine
    from gboost.sampling import SamplingParams
    eng = Engine.from_pretrained(str(tiny_dir), dtype="float32", weights="int4")
    assert set(eng.weight_formats.values()) == {"int4"}
    ref = eng.generate([eng.role("slm").tokenizer.encode("Hello")], SamplingParams(temperature=0.0, max_tokens=8))[0]
    assert out["token_ids"] == ref.token_ids


def test_solve_reports_the_weight_format(tiny_dir, tmp_path):
    out = json.loads(gboost("solve", "--slm", tiny_dir, "--llm", tiny_dir, "--prm-kind", "token_pair",
                            "--dtype", "float32", "--weights", "int8", "--config", _cfg(tmp_path), "--json",
                            "What is 2+2?").stdout)
    assert out["steps"] and out["stats"]["weights"] == {str(tiny_dir): "int8"}
