"""GGUF -> Hugging Face-named float weights, config and tokenizer, with an on-disk cache.

Reading uses the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`) and never pickle.

Reading the file, its config and tensor names: gguf_format.py.

Cache: dequantizing a few hundred MB of blocks costs seconds to tens of seconds, so the result is
written once as safetensors under `<cache>/gguf/<sha256 of the GGUF>-v<format>/`:
`meta.json` (config, chat template, special tokens), `tokenizer.json`, `weights.<dtype>.safetensors`
(one file per dtype asked for; a missing dtype is cast from an existing float32 file, which is exact,
and otherwise re-converted from the GGUF). Every file is written to a temp name and renamed, and
meta.json last, so a crash leaves no half entry; an unreadable entry is rebuilt, never fatal.
Cached state dicts are memory-mapped from the safetensors file (copy-on-write): the second load
returns in well under a second and pages come in from the OS cache on first touch.
The cache root is `cache_dir`, else `$GBOOST_CACHE`, else `~/.cache/gboost`.

Cache key: the full sha256 of the file's content, so any change of content, however local, gets a
fresh entry and two copies of one file share one. Hashing is paid only the first time a given
(path, size, mtime, ctime, inode) is seen -- i.e. together with the dequantization, which costs
far more. Later loads look the hash up in `<cache>/file-hashes.json` by that stat signature. A sampled
fingerprint (size + head + tail) would be faster still on first sight but can collide for two
fine-tunes with identical metadata, and this file is the key to someone's model weights.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .config import ModelConfig
from .gguf_format import (check_gguf_path, config_from_gguf, hf_name, open_gguf, read_metadata, tensor_shape,
                          unpermute_qk)
from .gguf_tokenizer import build_byte_level_bpe, tokenizer_from_gguf  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the conversion or the cache layout changes

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# --------------------------------------------------------------------------------------------
# cache directory, hashing, atomic writes
# --------------------------------------------------------------------------------------------
def default_cache_dir() -> Path:
    env = os.environ.get("GBOOST_CACHE")
    if env:
        return Path(env).expanduser()
    return Path("~/.cache/gboost").expanduser()


def resolve_cache_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256_file(path: str | os.PathLike, chunk_size: int = 8 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk_size)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600
        os.replace(tmp, path)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _unlink_quiet(path: str | os.PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _stat_signature(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns, "ino": st.st_ino}


def _hash_index_path(root: Path) -> Path:
    return root / "file-hashes.json"


def _read_hash_index(root: Path) -> dict[str, Any]:
    try:
        data = json.loads(_hash_index_path(root).read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def remember_file_hash(path: str | os.PathLike, sha256: str, cache_root: Path) -> None:
    """Record `sha256` for the file as it is now (stat signature), so `file_content_hash` is free."""
    path = Path(path).resolve()
    index = _read_hash_index(cache_root)
    index[str(path)] = {**_stat_signature(path), "sha256": sha256}
    try:
        atomic_write_bytes(_hash_index_path(cache_root), json.dumps(index, indent=1).encode())
    except OSError as e:  # a read-only cache only costs a re-hash next time
        log.warning("could not update %s: %s", _hash_index_path(cache_root), e)


def file_content_hash(path: str | os.PathLike, cache_root: Path) -> str:
    """Full sha256 of the file, memoized by (path, size, mtime, ctime, inode) in the cache root."""
    path = Path(path).resolve()
    entry = _read_hash_index(cache_root).get(str(path))
    if isinstance(entry, dict) and entry.get("sha256") and all(
        entry.get(k) == v for k, v in _stat_signature(path).items()
    ):
        return entry["sha256"]
    digest = sha256_file(path)
    remember_file_hash(path, digest, cache_root)
    return digest


def dequantize_tensor(tensor) -> np.ndarray:
    """A `ReaderTensor` as float32 numpy in torch (row-major, HF) order. Patched in tests."""
    from gguf.quants import dequantize

    arr = dequantize(tensor.data, tensor.tensor_type)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=np.float32, order="C")
    return arr


# --------------------------------------------------------------------------------------------
# conversion + cache
# --------------------------------------------------------------------------------------------
def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=None, leave=False)


def convert_gguf(reader, path: str, dtype: torch.dtype) -> dict[str, Any]:
    """Parse + dequantize a whole GGUF into the pieces of a Checkpoint (no cache involved)."""
    tensors = list(reader.tensors)
    shapes = {t.name: tensor_shape(t) for t in tensors}
    meta = read_metadata(reader)
    config = config_from_gguf(meta, shapes, path)
    tok, special, eos_ids, add_bos = tokenizer_from_gguf(meta, path)
    config.eos_token_ids = eos_ids
    chat_template = meta.get("tokenizer.chat_template")

    expected = config.expected_shapes()
    jobs = []
    for t in tensors:
        name = hf_name(t.name)
        if name is None:
            continue
        if name not in expected:
            raise ValueError(f"GGUF file {path}: tensor {t.name} ({name}) is not expected for this config")
        if shapes[t.name] != expected[name]:
            raise ValueError(f"GGUF file {path}: tensor {t.name} has shape {shapes[t.name]}, "
                             f"expected {expected[name]} for {name}")
        jobs.append((t, name))
    missing = sorted(set(expected) - {n for _, n in jobs})
    if missing:
        raise ValueError(f"GGUF file {path} is missing {len(missing)} tensor(s): {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))

    permute_heads = {}
    if config.architecture == "llama":  # llama.cpp permuted these rows; Qwen2 it leaves alone
        permute_heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}

    def work(job):
        t, name = job
        try:
            arr = dequantize_tensor(t)
        except NotImplementedError:
            raise ValueError(f"GGUF file {path}: tensor {t.name} is stored as {t.tensor_type.name}, a type gboost "
                             "cannot read (gguf's dequantizer has no such type)") from None
        w = torch.from_numpy(arr).reshape(expected[name])
        proj = name.split(".")[-2]
        if proj in permute_heads:
            w = unpermute_qk(w, permute_heads[proj])
        return name, w.to(dtype).contiguous()

    state_dict: dict[str, torch.Tensor] = {}
    # numpy's dequantization releases the GIL: one worker per core
    workers = max(1, min(8, os.cpu_count() or 1))
    with _progress(len(jobs), f"dequantizing {Path(path).name}") as bar, ThreadPoolExecutor(workers) as pool:
        for name, w in pool.map(work, jobs):
            state_dict[name] = w
            bar.update(1)
    return {
        "config": config,
        "state_dict": state_dict,
        "tokenizer": tok,
        "chat_template": chat_template,
        "eos_token_ids": list(eos_ids),
        "special_tokens": special,
        "add_bos_token": add_bos,
    }


def _cache_entry_dir(root: Path, sha: str) -> Path:
    return root / "gguf" / f"{sha[:32]}-v{CACHE_FORMAT}"


def _weights_file(entry: Path, dtype: torch.dtype) -> Path:
    return entry / f"weights.{DTYPE_NAMES[dtype]}.safetensors"


def _load_from_cache(entry: Path, sha: str, dtype: torch.dtype) -> dict[str, Any] | None:
    from safetensors.torch import load_file
    from tokenizers import Tokenizer

    meta_path, tok_path = entry / "meta.json", entry / "tokenizer.json"
    if not meta_path.is_file() or not tok_path.is_file():
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != CACHE_FORMAT or meta.get("sha256") != sha:
            return None
        config = ModelConfig.from_dict(meta["config"])
        expected = config.expected_shapes()
        src = _weights_file(entry, dtype)
        if not src.is_file():
            src = _weights_file(entry, torch.float32)  # exact source for any other dtype
            if dtype == torch.float32 or not src.is_file():
                return None
        state_dict = load_file(str(src))
        if set(state_dict) != set(expected) or any(
                tuple(state_dict[k].shape) != v for k, v in expected.items()):
            raise ValueError("tensor set/shapes do not match the cached config")
        if src != _weights_file(entry, dtype):
            state_dict = {k: v.to(dtype) for k, v in state_dict.items()}
            _save_weights(entry, dtype, state_dict)
        tok = Tokenizer.from_file(str(tok_path))
    except Exception as e:  # a damaged cache entry is rebuilt, never fatal
        log.warning("ignoring damaged GGUF cache entry %s: %s", entry, e)
        return None
    return {
        "config": config,
        "state_dict": state_dict,
        "tokenizer": tok,
        "chat_template": meta.get("chat_template"),
        "eos_token_ids": list(meta.get("eos_token_ids") or config.eos_token_ids),
        "special_tokens": meta.get("special_tokens") or {},
        "add_bos_token": bool(meta.get("add_bos_token", False)),
    }


def _save_weights(entry: Path, dtype: torch.dtype, state_dict: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    dst = _weights_file(entry, dtype)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=entry)
    os.close(fd)
    try:
        save_file(state_dict, tmp, metadata={"format": "pt", "gboost_cache_format": str(CACHE_FORMAT)})
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        _unlink_quiet(tmp)
        raise


def _write_cache(entry: Path, sha: str, path: str, loaded: dict[str, Any], dtype: torch.dtype) -> None:
    entry.mkdir(parents=True, exist_ok=True)
    _save_weights(entry, dtype, loaded["state_dict"])
    atomic_write_bytes(entry / "tokenizer.json", loaded["tokenizer"].to_str().encode())
    meta = {
        "format": CACHE_FORMAT,
        "sha256": sha,
        "source": str(path),
        "config": loaded["config"].to_dict(),
        "chat_template": loaded["chat_template"],
        "eos_token_ids": loaded["eos_token_ids"],
        "special_tokens": loaded["special_tokens"],
        "add_bos_token": loaded["add_bos_token"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_bytes(entry / "meta.json", json.dumps(meta, indent=1).encode())  # written last


def load_gguf(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
              cache_dir: str | os.PathLike | None = None, use_cache: bool = True) -> dict[str, Any]:
    """Load a GGUF file; returns the fields of a `Checkpoint` plus `from_cache`."""
    if dtype not in DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype}; use one of {', '.join(DTYPE_NAMES.values())}")
    p = check_gguf_path(path)
    root = resolve_cache_dir(cache_dir)
    sha = file_content_hash(p, root) if use_cache else ""
    entry = _cache_entry_dir(root, sha) if use_cache else None
    if entry is not None:
        hit = _load_from_cache(entry, sha, dtype)
        if hit is not None:
            return {**hit, "from_cache": True, "sha256": sha}
    reader = open_gguf(p)
    loaded = convert_gguf(reader, str(p), dtype)
    del reader
    if entry is not None:
        try:
            _write_cache(entry, sha, str(p), loaded, dtype)
        except OSError as e:
            log.warning("could not write GGUF cache %s: %s", entry, e)
    return {**loaded, "from_cache": False, "sha256": sha}


def gguf_int4_codes(path: str | os.PathLike, config: ModelConfig) -> dict[str, Any]:
    """The exact int4 codes (models/quant.py, ``Int4Codes``) of every 4-bit linear weight of a GGUF
    file, by HF name: read from the file's raw blocks, never through a float copy."""
    from .quant import gguf_int4
    reader = open_gguf(check_gguf_path(path))
    permute_heads = {}
    if config.architecture == "llama":
        permute_heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
    out = {}
    for t in reader.tensors:
        name = hf_name(t.name)
        shape = tensor_shape(t)
        if name is None or len(shape) != 2 or name.endswith("embed_tokens.weight"):
            continue
        codes = gguf_int4(t.tensor_type.name, np.asarray(t.data), *shape)
        if codes is None:
            continue
        proj = name.split(".")[-2]
        if proj in permute_heads:
            perm = unpermute_qk(torch.arange(shape[0]), permute_heads[proj])
            codes = codes.rows(perm)
        out[name] = codes
    return out
