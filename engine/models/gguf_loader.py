"""GGUF -> Hugging Face-named float weights, config and tokenizer, with an on-disk cache.

Reading uses the `gguf` package (`GGUFReader`, `gguf.quants.dequantize`) and never pickle.

What llama.cpp's converter did, and what we undo:
- tensor names: `blk.N.attn_q.weight` -> `model.layers.N.self_attn.q_proj.weight`, etc. (`hf_name`).
- llama only: q/k projection rows were permuted from HF's "rotate_half" RoPE layout to GGML's
  interleaved one (`permute_qk`); `unpermute_qk` is its exact inverse (as transformers does).
  Qwen2 is converted without that permutation (llama.cpp uses NEOX-style RoPE for it).
- Qwen2 GGUFs usually ship a separate `output.weight` (quantized differently from the embedding),
  so the result is untied (`lm_head.weight` present), exactly like transformers' GGUF loading.

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
from typing import Any, Iterable

import numpy as np
import torch

from .config import SUPPORTED_ARCHITECTURES, ModelConfig, unsupported_architecture
from .gguf_tokenizer import build_byte_level_bpe, tokenizer_from_gguf  # noqa: F401  (re-exported)

log = logging.getLogger(__name__)

CACHE_FORMAT = 1  # bump when the conversion or the cache layout changes
GGUF_MAGIC = b"GGUF"

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


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
def check_gguf_path(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"GGUF file not found: {p}")
    if not p.is_file():
        raise ValueError(f"{p} is not a regular file")
    with open(p, "rb") as f:
        head = f.read(4)
    if head != GGUF_MAGIC:
        raise ValueError(f"{p} is not a GGUF file (starts with {head!r}, expected {GGUF_MAGIC!r})")
    return p


def _fast_reader_class():
    from gguf import GGUFReader

    class FastGGUFReader(GGUFReader):
        """GGUFReader whose mapped file is a plain ndarray view of the memmap.

        The reader slices the file hundreds of thousands of times while parsing the token arrays;
        on an `np.memmap` every slice runs `memmap.__array_finalize__`. On a plain view of the same
        buffer it does not: parsing the 0.5B demo file drops from ~7 s to ~2 s. Same bytes, same API.
        """

        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = value.view(np.ndarray) if isinstance(value, np.memmap) else value

    return FastGGUFReader


def open_gguf(path: str | os.PathLike):
    """`gguf.GGUFReader` for the file, with clear errors for missing/truncated/corrupted files."""
    p = check_gguf_path(path)
    try:
        reader = _fast_reader_class()(str(p), "r")
    except Exception as e:  # the reader fails deep inside numpy on a short or garbled file
        raise ValueError(
            f"cannot read GGUF file {p} ({p.stat().st_size} bytes): it looks truncated or corrupted "
            f"({type(e).__name__}: {e})"
        ) from e
    size = p.stat().st_size
    for t in reader.tensors:
        end = int(t.data_offset) + int(t.n_bytes)
        if end > size:
            raise ValueError(f"GGUF file {p} is truncated: tensor {t.name} ends at byte {end}, file has {size}")
    return reader


def _field_value(field) -> Any:
    try:
        return field.contents()
    except Exception:  # pragma: no cover - very old gguf
        return None


def read_metadata(reader, keys: Iterable[str] | None = None) -> dict[str, Any]:
    """Metadata as python values. With `keys`, only those (the big token arrays are cheap anyway)."""
    names = list(reader.fields) if keys is None else [k for k in keys if k in reader.fields]
    return {k: _field_value(reader.fields[k]) for k in names}


# --------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------
def config_from_gguf(meta: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]], path: str = "") -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch not in SUPPORTED_ARCHITECTURES:
        raise unsupported_architecture(arch, f"GGUF file {path}" if path else "GGUF metadata")

    def need(key: str):
        full = f"{arch}.{key}"
        if meta.get(full) is None:
            raise ValueError(f"GGUF file {path} lacks required metadata {full!r}")
        return meta[full]

    hidden = int(need("embedding_length"))
    heads = int(need("attention.head_count"))
    kv_heads = meta.get(f"{arch}.attention.head_count_kv")
    if isinstance(kv_heads, list):  # per-layer lists exist for hybrid models; ours are uniform
        if len(set(kv_heads)) != 1:
            raise ValueError(f"GGUF file {path}: per-layer head_count_kv {kv_heads} is not supported")
        kv_heads = kv_heads[0]
    head_dim = meta.get(f"{arch}.attention.key_length")
    head_dim = int(head_dim) if head_dim is not None else hidden // heads
    value_length = meta.get(f"{arch}.attention.value_length")
    if value_length is not None and int(value_length) != head_dim:
        raise ValueError(f"GGUF file {path}: key_length {head_dim} != value_length {value_length} is not supported")
    rot = meta.get(f"{arch}.rope.dimension_count")
    if rot is not None and int(rot) != head_dim:
        raise ValueError(f"GGUF file {path}: partial rotary (rope.dimension_count {rot} < head_dim {head_dim}) "
                         "is not supported")

    if "token_embd.weight" not in tensor_shapes:
        raise ValueError(f"GGUF file {path} has no token_embd.weight tensor")
    vocab = tensor_shapes["token_embd.weight"][0]
    tokens = meta.get("tokenizer.ggml.tokens")
    if meta.get(f"{arch}.vocab_size") is not None and int(meta[f"{arch}.vocab_size"]) != vocab:
        raise ValueError(f"GGUF file {path}: {arch}.vocab_size {meta[f'{arch}.vocab_size']} != embedding rows {vocab}")
    if tokens is not None and len(tokens) > vocab:
        raise ValueError(f"GGUF file {path}: tokenizer has {len(tokens)} tokens but the embedding only {vocab} rows")

    attention_bias = "blk.0.attn_q.bias" in tensor_shapes
    if arch == "llama" and attention_bias:
        raise ValueError(f"GGUF file {path}: llama with attention biases is not supported")
    if arch == "qwen2" and not attention_bias:
        raise ValueError(f"GGUF file {path}: qwen2 without q/k/v biases (blk.0.attn_q.bias) is not supported")

    rope_scaling = None
    scaling_type = meta.get(f"{arch}.rope.scaling.type")
    if scaling_type not in (None, "none"):
        rope_scaling = {"rope_type": scaling_type}
        if meta.get(f"{arch}.rope.scaling.factor") is not None:
            rope_scaling["factor"] = float(meta[f"{arch}.rope.scaling.factor"])
        if meta.get(f"{arch}.rope.scaling.original_context_length") is not None:
            rope_scaling["original_max_position_embeddings"] = int(
                meta[f"{arch}.rope.scaling.original_context_length"])
    if "rope_freqs.weight" in tensor_shapes:  # llama3 scaling stored as per-frequency factors
        raise ValueError(f"GGUF file {path}: RoPE frequency factors (rope_freqs.weight, Llama 3.1+) are not "
                         "supported; load the Hugging Face checkpoint (its rope_scaling is applied)")

    return ModelConfig(
        architecture=arch,
        vocab_size=vocab,
        hidden_size=hidden,
        intermediate_size=int(need("feed_forward_length")),
        num_hidden_layers=int(need("block_count")),
        num_attention_heads=heads,
        num_key_value_heads=int(kv_heads) if kv_heads is not None else heads,
        head_dim=head_dim,
        rms_norm_eps=_f32_value(meta.get(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
        rope_theta=_f32_value(meta.get(f"{arch}.rope.freq_base", 10000.0)),
        max_position_embeddings=int(meta.get(f"{arch}.context_length", 2048)),
        tie_word_embeddings="output.weight" not in tensor_shapes,
        attention_bias=attention_bias,
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_ids=[],  # filled from the tokenizer (eos + end-of-turn tokens)
        rope_scaling=rope_scaling,
    )


def _f32_value(v) -> float:
    """GGUF stores these as float32: give back the short decimal it came from (9.99999997e-07 -> 1e-06)."""
    return float(str(np.float32(v)))


# --------------------------------------------------------------------------------------------
# tensor names and the llama q/k permutation
# --------------------------------------------------------------------------------------------
_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
# tensors llama.cpp writes that have no Hugging Face parameter
_SKIPPED = {"rope_freqs.weight"}


def hf_name(gguf_name: str) -> str | None:
    """HF parameter name for a GGUF tensor name; None for the ones we deliberately skip."""
    if gguf_name in _TOP_LEVEL:
        return _TOP_LEVEL[gguf_name]
    if gguf_name in _SKIPPED:
        return None
    parts = gguf_name.split(".")
    if len(parts) == 4 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _PER_LAYER \
            and parts[3] in ("weight", "bias"):
        return f"model.layers.{parts[1]}.{_PER_LAYER[parts[2]]}.{parts[3]}"
    raise ValueError(f"unexpected GGUF tensor {gguf_name!r} (not part of a qwen2/llama decoder)")


def gguf_name(hf: str) -> str:
    """Inverse of `hf_name` (used to write GGUF files in tests/tools)."""
    for g, h in _TOP_LEVEL.items():
        if hf == h:
            return g
    parts = hf.split(".")
    if hf.startswith("model.layers."):
        layer, rest = parts[2], ".".join(parts[3:-1])
        for g, h in _PER_LAYER.items():
            if h == rest:
                return f"blk.{layer}.{g}.{parts[-1]}"
    raise ValueError(f"no GGUF name for {hf!r}")


def permute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """What llama.cpp's convert_hf_to_gguf.py does to llama q/k rows (HF -> GGUF)."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot permute {tuple(w.shape)} for {n_head} heads")
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def unpermute_qk(w: torch.Tensor, n_head: int) -> torch.Tensor:
    """Exact inverse of `permute_qk` (GGUF -> HF); same as transformers' `_reverse_permute_weights`."""
    rows = w.shape[0]
    if rows % (2 * n_head):
        raise ValueError(f"cannot un-permute {tuple(w.shape)} for {n_head} heads")
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def dequantize_tensor(tensor) -> np.ndarray:
    """A `ReaderTensor` as float32 numpy in torch (row-major, HF) order. Patched in tests."""
    from gguf.quants import dequantize

    arr = dequantize(tensor.data, tensor.tensor_type)
    if arr.dtype != np.float32:
        arr = arr.astype(np.float32)
    if not arr.flags.writeable or not arr.flags.c_contiguous:
        arr = np.array(arr, dtype=np.float32, order="C")
    return arr


def _tensor_shape(t) -> tuple[int, ...]:
    return tuple(int(x) for x in reversed(list(t.shape)))  # GGUF lists the fastest dim first


# --------------------------------------------------------------------------------------------
# conversion + cache
# --------------------------------------------------------------------------------------------
def _progress(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="tensor", disable=None, leave=False)


def convert_gguf(reader, path: str, dtype: torch.dtype) -> dict[str, Any]:
    """Parse + dequantize a whole GGUF into the pieces of a Checkpoint (no cache involved)."""
    tensors = list(reader.tensors)
    shapes = {t.name: _tensor_shape(t) for t in tensors}
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
        w = torch.from_numpy(dequantize_tensor(t)).reshape(expected[name])
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
