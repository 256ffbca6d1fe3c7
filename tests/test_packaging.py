"""One import namespace: the distribution installs `gboost` and nothing else at the top level, and it
lives beside Hugging Face's `kernels` (which transformers >= 5.25 requires) from any directory."""
import importlib.metadata
import os
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_distribution_installs_one_top_level_name():
    dist = importlib.metadata.distribution("gboost")
    top_level = {line.strip() for line in (dist.read_text("top_level.txt") or "").splitlines() if line.strip()}
    owned = {name for name, dists in importlib.metadata.packages_distributions().items() if "gboost" in dists}
    assert top_level == owned == {"gboost"}, (top_level, owned)


def test_the_package_list_covers_every_package_folder():
    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    folders = {f"gboost.{d.name}" for d in (ROOT / "engine").iterdir()
               if d.is_dir() and not d.is_symlink() and (d / "__init__.py").exists()}
    assert set(setup["packages"]) == {"gboost", "gboost.kernels"} | folders
    assert setup["package-dir"] == {"gboost": "engine"}
    # gboost.kernels is kernels/ through a link, and kernels/ is no regular package of its own
    assert (ROOT / "engine" / "kernels").is_symlink() and (ROOT / "engine" / "kernels").resolve() == ROOT / "kernels"
    assert not (ROOT / "kernels" / "__init__.py").exists()


STAND_IN = '''\
"""A stand-in for Hugging Face's `kernels` distribution: every name transformers imports from it."""
__version__ = "{version}"
STAND_IN = True


class _Any:
    def __init__(self, *a, **kw):
        pass

    def __call__(self, *a, **kw):
        return self

    def __getattr__(self, name):
        return _Any()

    def __or__(self, other):
        return self
    __ror__ = __or__


def use_kernel_forward_from_hub(name):   # the decorators leave what they decorate as it is
    return lambda cls: cls


def use_kernelized_func(*funcs):
    return lambda obj: obj


def __getattr__(name):
    return _Any()
'''


def _stand_in_kernels(site: Path, version: str) -> Path:
    """`kernels` as pip would install it: the package, and a dist-info that names it."""
    (site / "kernels").mkdir(parents=True)
    (site / "kernels" / "__init__.py").write_text(STAND_IN.format(version=version))
    info = site / f"kernels-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: kernels\nVersion: {version}\n")
    (info / "top_level.txt").write_text("kernels\n")
    (info / "RECORD").write_text("kernels/__init__.py,,\n")
    return site


CHECK = textwrap.dedent("""
    import sys, torch
    import kernels
    assert getattr(kernels, "STAND_IN", False), kernels.__file__   # HF's name is HF's package
    from transformers.utils.import_utils import is_kernels_available
    assert is_kernels_available()
    import transformers.integrations.hub_kernels                   # raised ImportError before the rename
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2)
    ids = torch.tensor([[1, 2, 3, 4]])
    hf = Qwen2ForCausalLM(cfg).eval()(ids).logits
    assert torch.isfinite(hf).all()
    import gboost.kernels.step_scoring
    from gboost.sampling import SamplingParams
    from gboost.testing import tiny_engine
    out = tiny_engine({"slm": 1}).generate([[5, 6, 7]], SamplingParams(max_tokens=3, ignore_eos=True))
    assert len(out[0].token_ids) == 3
    print("ok")
""")


@pytest.mark.parametrize("cwd", ["repo_root", "elsewhere"])
def test_transformers_and_gboost_import_beside_hf_kernels(tmp_path, cwd):
    site = _stand_in_kernels(tmp_path / "site", "0.19.5")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    # from the repository root `python -c` puts the checkout first on sys.path: the old shadowing case
    run = subprocess.run([sys.executable, "-c", CHECK], cwd=ROOT if cwd == "repo_root" else tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-3000:]
