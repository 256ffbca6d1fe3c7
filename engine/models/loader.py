"""`load_checkpoint`: one entry point for every place a model can come from.

    ckpt = load_checkpoint("qwen2.5-coder-0.5b")          # demo model (gboost.models.registry)
    ckpt = load_checkpoint("/models/Qwen2.5-0.5B")        # Hugging Face directory (safetensors)
    ckpt = load_checkpoint("/models/x.Q4_K_M.gguf")       # GGUF file (dequantized, cached)
    ckpt = load_checkpoint("Qwen/Qwen2.5-0.5B-Instruct")  # Hub id (safetensors/json only)

The state dict always uses Hugging Face parameter names (see `ModelConfig.expected_shapes`), holds
exactly the tensors the config implies (`lm_head.weight` only when embeddings are untied; a
two-class PRM's `score.*` head in its place, see gboost.prm.heads), and is in `dtype`. Nothing is
ever unpickled: weights come from safetensors or GGUF only.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from gboost.prm.heads import has_score_head, is_head_key

from .config import ModelConfig
from .gguf_format import GGUF_MAGIC
from .gguf_loader import load_gguf
from .sources import download_from_hub, resolve

log = logging.getLogger(__name__)

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")

# tensors some checkpoints carry that are not parameters we need
_IGNORED_KEY_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class Checkpoint:
    """A loaded model: config, HF-named weights in one dtype, tokenizer and chat template.

    Weights read from safetensors (HF directories, the GGUF cache) are memory-mapped copy-on-write
    views of the file when no dtype conversion was needed; copy or move them to build the model.
    Prefer `get_tokenizer()` over wrapping `tokenizer` by hand: it also passes the special-token
    strings (`bos_token`, ...) that some chat templates use.
    """

    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    tokenizer: Any  # tokenizers.Tokenizer
    chat_template: str | None
    eos_token_ids: list[int]
    source: str  # the local file/directory actually read
    from_cache: bool  # GGUF only: served from the converted-safetensors cache
    name: str = ""  # what the caller asked for (demo name, path, hub id)
    special_tokens: dict[str, str | None] = field(default_factory=dict)  # bos_token, eos_token, ...
    add_bos_token: bool = False
    sha256: str | None = None  # GGUF: sha256 of the file (the cache key)
    load_seconds: float = 0.0

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.state_dict.values())).dtype

    def get_tokenizer(self):
        """The `gboost.models.tokenizer.Tokenizer` wrapper (encode/decode/chat template)."""
        from .tokenizer import Tokenizer

        return Tokenizer.from_checkpoint(self)


def as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key not in _DTYPES:
            raise ValueError(f"unsupported dtype {dtype!r}; use float32, bfloat16 or float16")
        return _DTYPES[key]
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"unsupported dtype {dtype}; use torch.float32, torch.bfloat16 or torch.float16")
    return dtype


def load_checkpoint(name_or_path: str | os.PathLike, dtype: torch.dtype | str = torch.bfloat16,
                    cache_dir: str | os.PathLike | None = None) -> Checkpoint:
    """Load a demo model name, HF directory, `.gguf` file or Hub id (see module docstring).

    `cache_dir` (default `$GBOOST_CACHE` or `~/.cache/gboost`) holds assembled demo GGUFs and the
    safetensors conversions of GGUF files; it is also used as the Hub download cache when given.
    """
    t0 = time.perf_counter()
    dtype = as_dtype(dtype)
    name = str(name_or_path)
    target = resolve(name, cache_dir=cache_dir)
    path = Path(target)
    if path.is_file():
        ckpt = _load_gguf_file(path, dtype, cache_dir)
    elif path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        if not (path / "config.json").exists() and len(ggufs) == 1:
            ckpt = _load_gguf_file(ggufs[0], dtype, cache_dir)
        else:
            ckpt = load_hf_dir(path, dtype)
    else:  # resolve only returns non-paths for Hub ids
        ckpt = load_hf_dir(download_from_hub(target, cache_dir), dtype)
    ckpt.name = name
    ckpt.load_seconds = time.perf_counter() - t0
    log.info("loaded %s from %s in %.2fs (from_cache=%s)", name, ckpt.source, ckpt.load_seconds, ckpt.from_cache)
    return ckpt


def _load_gguf_file(path: Path, dtype: torch.dtype, cache_dir) -> Checkpoint:
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != GGUF_MAGIC:
        if path.suffix in _PICKLE_SUFFIXES:
            raise ValueError(f"{path}: pickle-based checkpoints are never loaded; use safetensors or GGUF")
        if path.suffix == ".safetensors":
            raise ValueError(f"{path}: pass the model directory (with config.json and tokenizer.json), "
                             "not a single .safetensors file")
        raise ValueError(f"{path} is not a GGUF file (starts with {magic!r}) and not a model directory")
    out = load_gguf(path, dtype=dtype, cache_dir=cache_dir)
    return Checkpoint(
        config=out["config"], state_dict=out["state_dict"], tokenizer=out["tokenizer"],
        chat_template=out["chat_template"], eos_token_ids=list(out["eos_token_ids"]), source=str(path),
        from_cache=out["from_cache"], special_tokens=dict(out["special_tokens"]),
        add_bos_token=out["add_bos_token"], sha256=out["sha256"] or None,
    )


# ------------------------------------------------------------------------------------------------
# Hugging Face directories
# ------------------------------------------------------------------------------------------------
def _read_json(path: Path, required: bool = True) -> Any:
    if not path.exists():
        if required:
            raise FileNotFoundError(f"missing {path.name} in {path.parent} ({path})")
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _weight_files(d: Path) -> list[Path]:
    index_path = d / "model.safetensors.index.json"
    if index_path.exists():
        index = _read_json(index_path)
        weight_map = index.get("weight_map") if isinstance(index, dict) else None
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{index_path}: no 'weight_map' in the shard index")
        files = []
        for shard in dict.fromkeys(weight_map.values()):
            p = d / shard
            if not p.is_file():
                raise FileNotFoundError(f"shard {shard} listed in {index_path} is missing ({p})")
            files.append(p)
        return files
    if (d / "model.safetensors").is_file():
        return [d / "model.safetensors"]
    files = sorted(d.glob("*.safetensors"))
    if files:
        return files
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise ValueError(f"{d} only has pickle-based weights ({', '.join(pickles[:3])}); gboost loads "
                         "safetensors only -- convert them (e.g. save_pretrained(safe_serialization=True))")
    raise FileNotFoundError(f"no *.safetensors weights in {d}")


def _read_safetensors(files: list[Path], config: ModelConfig, dtype: torch.dtype, where: Path) -> dict:
    from safetensors import SafetensorError, safe_open
    from tqdm.auto import tqdm

    expected = config.expected_shapes()
    state_dict: dict[str, torch.Tensor] = {}
    unexpected: list[str] = []
    with tqdm(total=len(expected), desc=f"loading {where.name}", unit="tensor", disable=None, leave=False) as bar:
        for f in files:
            try:
                with safe_open(str(f), framework="pt") as st:
                    for key in st.keys():
                        if is_head_key(key):  # a two-class PRM's score head: gboost.prm.heads checks it
                            state_dict[key] = st.get_tensor(key).to(dtype)
                            continue
                        if key not in expected:
                            if not key.endswith(_IGNORED_KEY_SUFFIXES) and not (
                                    key == "lm_head.weight" and config.tie_word_embeddings):
                                unexpected.append(key)
                            continue
                        t = st.get_tensor(key)
                        if tuple(t.shape) != expected[key]:
                            raise ValueError(f"{f}: tensor {key} has shape {tuple(t.shape)}, "
                                             f"config.json implies {expected[key]}")
                        if not t.is_floating_point():
                            raise ValueError(f"{f}: tensor {key} has non-float dtype {t.dtype} (quantized?)")
                        state_dict[key] = t.to(dtype)
                        bar.update(1)
            except (SafetensorError, OSError) as e:
                if isinstance(e, FileNotFoundError):
                    raise
                raise ValueError(f"{f}: cannot read safetensors file (truncated or corrupted?): {e}") from e
    missing = [k for k in expected if k not in state_dict]
    if has_score_head(state_dict):  # the score head replaces the LM head
        missing = [k for k in missing if k != "lm_head.weight"]
    if missing:
        raise ValueError(f"{where}: checkpoint is missing {len(missing)} tensor(s): {', '.join(missing[:8])}"
                         + (" ..." if len(missing) > 8 else ""))
    if unexpected:
        log.warning("%s: ignoring %d unexpected tensor(s): %s", where, len(unexpected), ", ".join(unexpected[:5]))
    return state_dict


def _token_content(tok: Any) -> str | None:
    if isinstance(tok, dict):
        return tok.get("content")
    return tok if isinstance(tok, str) else None


def _chat_template(d: Path, tok_cfg: dict) -> str | None:
    jinja = d / "chat_template.jinja"  # transformers >= 4.50 saves it here
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    tpl = tok_cfg.get("chat_template")
    if isinstance(tpl, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
        return named.get("default") or next(iter(named.values()), None)
    if tpl is None and (d / "chat_template.json").is_file():
        tpl = (_read_json(d / "chat_template.json") or {}).get("chat_template")
    return tpl if isinstance(tpl, str) else None


def load_hf_dir(path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16) -> Checkpoint:
    from tokenizers import Tokenizer

    d = Path(path)
    if not d.is_dir():
        raise FileNotFoundError(f"model directory not found: {d}")
    cfg_dict = _read_json(d / "config.json")
    try:
        config = ModelConfig.from_hf_dict(cfg_dict)
    except ValueError as e:
        raise ValueError(f"{d / 'config.json'}: {e}") from e

    tok_path = d / "tokenizer.json"
    if not tok_path.is_file():
        raise FileNotFoundError(f"missing tokenizer.json in {d} (gboost needs a fast-tokenizer file)")
    try:
        tokenizer = Tokenizer.from_file(str(tok_path))
    except Exception as e:
        raise ValueError(f"{tok_path}: cannot parse tokenizer ({e})") from e
    tok_cfg = _read_json(d / "tokenizer_config.json", required=False) or {}
    gen_cfg = _read_json(d / "generation_config.json", required=False) or {}

    special = {k: _token_content(tok_cfg.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token")}
    eos_ids: list[int] = []
    for src in (gen_cfg.get("eos_token_id"), config.eos_token_ids):
        for i in (src if isinstance(src, list) else [src] if src is not None else []):
            if int(i) not in eos_ids:
                eos_ids.append(int(i))
    if special["eos_token"] is not None:
        i = tokenizer.token_to_id(special["eos_token"])
        if i is not None and i not in eos_ids:
            eos_ids.append(i)
    config.eos_token_ids = eos_ids
    if config.bos_token_id is None and special["bos_token"] is not None:
        config.bos_token_id = tokenizer.token_to_id(special["bos_token"])

    state_dict = _read_safetensors(_weight_files(d), config, dtype, d)
    return Checkpoint(
        config=config, state_dict=state_dict, tokenizer=tokenizer, chat_template=_chat_template(d, tok_cfg),
        eos_token_ids=list(eos_ids), source=str(d), from_cache=False, special_tokens=special,
        add_bos_token=bool(tok_cfg.get("add_bos_token", False)),
    )


# ------------------------------------------------------------------------------------------------
# Hub
