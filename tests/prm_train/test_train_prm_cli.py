"""`gboost train-prm` and `--prm value-head:DIR` through the command line, on tiny checkpoints on disk."""
import json
import re

import pytest

from gboost.testing import run_cli as gboost, write_tiny_checkpoint


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    return write_tiny_checkpoint(root / "slm", seed=1), write_tiny_checkpoint(root / "other", seed=7)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    p = tmp_path_factory.mktemp("data") / "qa.jsonl"
    p.write_text("".join(json.dumps({"question": f"{a} plus {b}?", "answer": str(a + b)}) + "\n"
                         for a, b in [(1, 2), (3, 4), (5, 6), (7, 1), (2, 9)]))
    return p


def test_train_then_solve_with_the_head(models, data, tmp_path):
    slm, other = models
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"max_step_tokens": 4, "max_depth": 2, "num_simulations": 2, "temperature": 1.0,
                               "top_p": 1.0}))
    out = tmp_path / "head"
    common = ("--slm", slm, "--llm", slm, "--dtype", "float32", "--config", cfg)
    p = gboost("train-prm", "--data", data, "--lines", "2-5", "--out", out, "--samples", 2, *common)
    assert "8 solutions of 4 questions" in p.stdout and f"value-head:{out}" in p.stdout
    recs = [json.loads(x) for x in (out / "rollouts.jsonl").read_text().splitlines()]
    assert sorted({r["line"] for r in recs}) == [2, 3, 4, 5]
    card = json.loads((out / "card.json").read_text())
    assert card["sequence"] == "slm" and card["training"]["data"]["lines"] == [2, 5]
    # the head scores a search on the model it was trained on ...
    res = json.loads(gboost("solve", "--slm", slm, "--llm", slm, "--prm", f"value-head:{out}", "--dtype", "float32",
                            "--config", cfg, "--json", "q").stdout)
    assert res["steps"] and res["cost"]["prm_tokens"] == 0 and res["cost"]["prm_tokens_saved"] > 0
    # ... and is refused, in one line, on another
    p = gboost("solve", "--slm", other, "--llm", "none", "--prm", f"value-head:{out}", "--dtype", "float32",
               "--method", "beam", "--config", cfg, "q", check=False)
    assert p.returncode == 2 and "value head was trained on" in p.stderr and "Traceback" not in p.stderr


def cli(capsys, *args):
    """main() in this process (no interpreter start-up): (exit code, stderr)."""
    from gboost.cli import main
    rc = main([str(a) for a in args])
    return rc, capsys.readouterr().err


@pytest.mark.parametrize("content,msg", [
    ("", "file is empty"),
    ('{"question": "q", "answer": "1"}\n{oops\n', r"qa.jsonl:2: invalid JSON"),
    ('{"question": "q"}\n', "qa.jsonl:1: unknown row format"),
])
def test_bad_data_is_one_line_naming_the_line(models, tmp_path, capsys, content, msg):
    bad = tmp_path / "qa.jsonl"
    bad.write_text(content)
    rc, err = cli(capsys, "train-prm", "--data", bad, "--out", tmp_path / "h", "--slm", models[0], "--llm", "none",
                  "--collab-share", "0")
    assert rc == 2 and err.count("\n") == 1 and re.search(msg, err), err


@pytest.mark.parametrize("args,msg", [(("--lines", "5-2"), "FIRST <= LAST"), (("--lines", "1-99"), "has 5 rows"),
                                      (("--samples", "0"), "samples must be >= 1"),
                                      (("--llm", "none"), "need a general LLM"),
                                      (("--llm", "none", "--collab-share", "0", "--llm-share", "0.2"),
                                       "need a general LLM"),
                                      (("--collab-share", "0.9", "--llm-share", "0.2"), "llm_share must be in")])
def test_bad_arguments_are_refused_before_loading(models, data, tmp_path, capsys, args, msg):
    rc, err = cli(capsys, "train-prm", "--data", data, "--out", tmp_path / "h", "--slm", models[0], *args)
    assert rc == 2 and msg in err, err


def test_a_missing_head_is_refused_before_loading(models, capsys):
    rc, err = cli(capsys, "solve", "--slm", models[0], "--llm", "none", "--method", "beam",
                  "--prm", "value-head:/nonexistent", "q")
    assert rc == 2 and "no such directory" in err and "gsm8k-qwen2.5-coder-1.5b" in err


def test_fit_only_uses_the_rollouts_already_there(models, data, tmp_path, capsys):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"max_step_tokens": 4, "max_depth": 2, "temperature": 1.0, "top_p": 1.0}))
    out = tmp_path / "h"
    common = ("--data", data, "--out", out, "--slm", models[0], "--llm", "none", "--collab-share", "0",
              "--dtype", "float32", "--config", cfg, "--samples", "2")
    rc, _ = cli(capsys, "train-prm", *common, "--lines", "1-4")
    assert rc == 0
    before = (out / "rollouts.jsonl").read_text()
    rc, _ = cli(capsys, "train-prm", *common, "--lines", "2-5", "--fit-only")  # line 5 was never sampled
    assert rc == 0 and (out / "rollouts.jsonl").read_text() == before
    card = json.loads((out / "card.json").read_text())
    assert card["training"]["questions"] == 3 and card["training"]["solutions"] == 6 and card["training"]["fit_only"]
