"""The value heads shipped with gboost and named by the docs: whole, loadable by name, fit on dev
lines only, carried as package data, and (slow) matching the demo LLM they were fit on."""
import pytest
import torch

from gboost.prm.value_head import HeadCard, ValueHead, load_head, save_head


def test_every_head_the_repository_names_is_there_whole():
    """The heads RESULTS.md and the configs point users to load: card and weights (`*.safetensors`
    is git-ignored, so a head's weights land only when added on purpose)."""
    from pathlib import Path
    root = Path(__file__).resolve().parents[2]
    named = set()
    for doc in [root / "README.md", root / "benchmarks" / "RESULTS.md", *(root / "benchmarks" / "configs").glob("*")]:
        named |= set(__import__("re").findall(r"benchmarks/runs/(prm_head_[\w.-]+)", doc.read_text()))
    assert named, "no head is named any more: drop this test"
    for name in sorted(named):
        _, card = load_head(root / "benchmarks" / "runs" / name)  # refuses a missing or broken file
        assert card.base_model and card.metrics


def test_shipped_heads_load_by_name_and_come_from_training_lines_only(tmp_path, monkeypatch):
    from gboost.prm.value_head import SHIPPED, shipped_heads
    assert "gsm8k-qwen2.5-coder-1.5b" in shipped_heads()
    for name in shipped_heads():
        head, card = load_head(name)
        again, _ = load_head(SHIPPED / name)
        x = torch.randn(3, card.hidden_size, generator=torch.Generator().manual_seed(0))
        assert torch.equal(head.score(x), again.score(x))
        lo, hi = card.training["data"]["lines"]
        assert 201 <= lo <= hi <= 1000, (name, lo, hi)  # tuned on dev lines only (never 1-100 or 1001+)
        assert card.metrics["auroc_val_steps"] > 0.5
    monkeypatch.chdir(tmp_path)  # a directory the user names wins over a shipped name
    save_head(tmp_path / "gsm8k-qwen2.5-coder-1.5b", ValueHead(8), HeadCard("mine", "f", 8, 1, "slm"))
    assert load_head("gsm8k-qwen2.5-coder-1.5b")[1].base_model == "mine"
    with pytest.raises(FileNotFoundError, match=r"no such directory.*shipped: gsm8k-qwen2.5-coder-1.5b"):
        load_head("no-such-head")


def test_shipped_heads_are_package_data():
    """A non-editable install carries the heads only if pyproject's package-data names their files."""
    import fnmatch
    import tomllib
    from pathlib import Path
    from gboost.prm.value_head import SHIPPED
    root = Path(__file__).resolve().parents[2]
    globs = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["gboost"]
    files = [p.relative_to(SHIPPED.parent).as_posix() for p in SHIPPED.rglob("*") if p.is_file()]
    assert files and all(any(fnmatch.fnmatch(f, g) for g in globs) for f in files), (files, globs)


@pytest.mark.slow
def test_the_shipped_head_fits_the_demo_llm():
    from gboost.models import registry
    from gboost.models.loader import load_checkpoint
    from gboost.models.qwen2_llama import build_model
    from gboost.prm.value_head import check_base
    if not registry.is_installed("qwen2.5-coder-1.5b"):
        pytest.skip("qwen2.5-coder-1.5b not installed")
    _, card = load_head("gsm8k-qwen2.5-coder-1.5b")
    ck = load_checkpoint("qwen2.5-coder-1.5b", dtype=torch.bfloat16)
    check_base(card, build_model(ck.config, ck.state_dict, torch.bfloat16), "qwen2.5-coder-1.5b")
