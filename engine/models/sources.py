"""Where a model name points: a demo model (gboost.models.registry), a local file or directory,
or a Hugging Face Hub id (downloaded as safetensors and json only, never pickle)."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from . import registry

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class HubDownloadError(OSError):
    """A Hugging Face Hub id could not be fetched (offline, unknown repo, no access...)."""


def resolve(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> str:
    """A demo name -> its GGUF path (assembled on demand); an existing path -> itself; a Hub id -> itself.

    Anything else raises FileNotFoundError naming the demo models.
    """
    s = str(name_or_path)
    if s in registry.DEMO_MODELS:
        return str(registry.model_path(s, cache_dir))
    p = Path(s).expanduser()
    if p.exists():
        return str(p)
    if is_hub_id(s) and not s.endswith(".gguf"):
        return s
    raise FileNotFoundError(
        f"{s!r} is not a file, a directory, a demo model ({', '.join(registry.list_models())}) or a Hub id (org/name)")


HUB_ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja"]  # never *.bin / *.pt (pickle)


def is_hub_id(name: str) -> bool:
    return bool(_HUB_ID.match(name)) and not name.startswith((".", "/"))


def download_from_hub(repo_id: str, cache_dir: str | os.PathLike | None = None) -> Path:
    """snapshot_download of the safetensors/json files of `repo_id`; HubDownloadError when that fails."""
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover
        raise HubDownloadError(f"cannot fetch {repo_id!r}: huggingface_hub is not installed") from e
    kwargs: dict[str, Any] = {"allow_patterns": HUB_ALLOW_PATTERNS}
    if cache_dir is not None:
        kwargs["cache_dir"] = str(Path(cache_dir).expanduser() / "hub")
    try:
        return Path(snapshot_download(repo_id, **kwargs))
    except Exception as e:
        raise HubDownloadError(
            f"could not download {repo_id!r} from the Hugging Face Hub ({type(e).__name__}: {e}). "
            "If this machine is offline, pass a local directory or .gguf file, or a demo model name "
            "(see gboost.models.registry.list_models()); if you meant a local path, it does not exist."
        ) from e
