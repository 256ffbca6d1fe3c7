"""Fixtures for the loading tests: a session cache dir, tiny HF/GGUF checkpoints, the real demo models.

Everything model-shaped here is written by the fixtures themselves (transformers' save_pretrained for
HF directories, gguf.GGUFWriter for GGUF files); the real demo models come from the installed
`[demo]` packages and are skipped when those are missing.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import pytest
import torch

from model_fixtures import (  # tests/models is on sys.path (no __init__.py, prepend import mode)
    make_tiny_hf,
    make_tiny_tokenizer,
    save_tiny_hf,
    write_gguf,
)

# ------------------------------------------------------------------------------------ cache isolation
@pytest.fixture(scope="session", autouse=True)
def gboost_cache(tmp_path_factory):
    """One GBOOST_CACHE for the whole session, so nothing lands in ~/.cache/gboost.

    Removed at the end: with the real demo model it holds a few GB (assembled GGUF + converted weights)."""
    root = tmp_path_factory.mktemp("gboost-cache")
    mp = pytest.MonkeyPatch()
    mp.setenv("GBOOST_CACHE", str(root))
    yield root
    mp.undo()
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------------------------ tiny tokenizer
@pytest.fixture(scope="session")
def tiny_tokenizer():
    return make_tiny_tokenizer()


# ------------------------------------------------------------------------------------ tiny HF models
@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory, tiny_tokenizer):
    """(dir, transformers model): tied Qwen2, GQA 4/2, biases."""
    model = make_tiny_hf("qwen2", seed=1, tie_word_embeddings=True)
    return save_tiny_hf(tmp_path_factory.mktemp("tiny-qwen2"), model, tiny_tokenizer), model


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory, tiny_tokenizer):
    """(dir, transformers model): untied Llama, GQA 4/2, head_dim 32 != hidden/heads."""
    model = make_tiny_hf("llama", seed=2, head_dim=32)
    return save_tiny_hf(tmp_path_factory.mktemp("tiny-llama"), model, tiny_tokenizer), model


# ------------------------------------------------------------------------------------ GGUF writing
@pytest.fixture(scope="session")
def gguf_writer():
    return write_gguf


# ------------------------------------------------------------------------------------ real demo model
def _demo_or_skip(name: str):
    from gboost.models import registry

    if not registry.is_installed(name):
        pytest.skip(f"demo model {name} not installed ({registry.DEMO_MODELS[name].install_hint})")


@pytest.fixture(scope="session")
def demo_05b(gboost_cache):
    """The real Qwen2.5-Coder-0.5B demo GGUF: first (converting) and second (cached) loads, float32.

    Load times are printed (run with -s) for benchmarks/RESULTS.md.
    """
    _demo_or_skip("qwen2.5-coder-0.5b")
    from gboost.models import registry
    from gboost.models.loader import load_checkpoint

    t0 = time.perf_counter()
    path = registry.model_path("qwen2.5-coder-0.5b")
    t_assemble = time.perf_counter() - t0
    first = load_checkpoint("qwen2.5-coder-0.5b", dtype=torch.float32)
    t_first = time.perf_counter() - t0
    t1 = time.perf_counter()
    second = load_checkpoint("qwen2.5-coder-0.5b", dtype=torch.float32)
    t_second = time.perf_counter() - t1
    print(f"\n[load-times] qwen2.5-coder-0.5b float32: assemble {t_assemble:.2f}s, first load "
          f"(assemble+dequantize+cache) {t_first:.2f}s, second load (cache) {t_second:.2f}s")
    return {"path": Path(path), "first": first, "second": second, "t_first": t_first, "t_second": t_second}


@pytest.fixture(scope="session")
def hf_gguf_05b(demo_05b):
    """transformers' own loading of the same GGUF (model in float32 + tokenizer), once per session."""
    transformers = pytest.importorskip("transformers")
    path = demo_05b["path"]
    t0 = time.perf_counter()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name,
                                                              dtype=torch.float32)
    tok = transformers.AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
    print(f"\n[load-times] transformers GGUF load of qwen2.5-coder-0.5b: {time.perf_counter() - t0:.2f}s")
    return model, tok

