"""The C ABI tests' fixtures: libgboost.so and the C++ example built once into a tmp dir, a tiny
random Qwen2 checkpoint, and the Python engine on it for reference generations."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from _abi import CSRC


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
@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
def py_engine(tiny_ckpt):
    """The same checkpoint in the Python engine, for reference generations."""
    from gboost.engine import Engine

    return Engine.from_pretrained(str(tiny_ckpt), dtype="float32", kv_memory_bytes=8 << 20)
