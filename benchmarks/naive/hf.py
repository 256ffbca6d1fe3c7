"""Loading the engine's checkpoints into transformers, and transformers' own greedy decode."""
from __future__ import annotations

from pathlib import Path

import torch


def load_hf(name_or_path: str, dtype: str | torch.dtype = torch.float32, device: str = "cpu"):
    """``AutoModelForCausalLM`` for what the engine loads by the same argument: a demo name (its
    assembled GGUF), a ``.gguf`` file or a Hugging Face directory."""
    import transformers
    from gboost.engine import parse_dtype
    from gboost.models import registry

    dt = parse_dtype(dtype)
    path = Path(name_or_path)
    if not path.exists() and name_or_path in registry.list_models():
        path = registry.model_path(name_or_path)
    if path.suffix == ".gguf":
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=dt)
    else:
        model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dt)
    return model.to(device).eval()


@torch.inference_mode()
def hf_greedy(model, prompts: list[list[int]], new_tokens: int) -> list[list[int]]:
    """``generate()`` greedy, exactly ``new_tokens`` tokens per prompt (equal-length prompts, no padding)."""
    x = torch.tensor(prompts, device=model.device)
    out = model.generate(x, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                         pad_token_id=0, attention_mask=torch.ones_like(x))
    return out[:, x.shape[1]:].tolist()
