"""The quick pair of ``gboost bench --quick``: a tiny random Qwen2 SLM and a deeper LLM built on it,
saved as Hugging Face directories by transformers, over one byte-level tokenizer."""
from __future__ import annotations

import json
from pathlib import Path

import torch

# the quick pair: a tiny random Qwen2 SLM, and an LLM (also the judge) three times as deep that
# starts with the SLM's layers and perturbs them (see deepened): related models agree on most
# greedy tokens, as a 1.5B agrees with the 0.5B of its family, so speculative drafts get accepted
QUICK_PAIR = dict(hidden=128, layers=4, heads=4, kv_heads=2, extra_layers=8, scale=0.1)
QUICK_CHAT = ("{% for m in messages %}<|{{ m['role'] }}|>\n{{ m['content'] }}\n{% endfor %}"
              "{% if add_generation_prompt %}<|assistant|>\n{% endif %}")


# ------------------------------------------------------------------------------ checkpoints
def _tokenizer():
    """Byte-level: one token per byte, ``<|endoftext|>`` (EOS), and "Yes" one token for the judge."""
    from gboost.testing import byte_tokenizer
    tok = byte_tokenizer().backend
    tok.add_tokens(["Yes"])
    return tok


def tiny_qwen2(*, hidden: int, layers: int, heads: int, kv_heads: int, seed: int, max_positions: int = 2048):
    """A random transformers Qwen2 model over the bench tokenizer (gboost.testing.tiny_hf_model)."""
    from gboost.testing import tiny_hf_model
    vocab = _tokenizer().get_vocab_size(with_added_tokens=True)
    return tiny_hf_model("qwen2", seed, init="scaled", vocab_size=vocab + (-vocab % 8), hidden_size=hidden,
                         intermediate_size=3 * hidden, num_hidden_layers=layers, num_attention_heads=heads,
                         num_key_value_heads=kv_heads, max_position_embeddings=max_positions, rms_norm_eps=1e-6,
                         rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=256, eos_token_id=256)


def deepened(model, extra_layers: int, scale: float, seed: int):
    """``model`` with ``extra_layers`` random decoder layers appended, their output projections
    scaled by ``scale``: the residual stream is nudged, not replaced, so the deeper model's greedy
    tokens mostly agree with the shallow one's (about 70% of the SLM's own greedy tokens at 8 layers
    and 0.1, as the 1.5B demo LLM agrees with the 0.5B on about half of its sampled drafts)."""
    import transformers
    n = model.config.num_hidden_layers
    d = model.config.to_dict()
    d.pop("layer_types", None)  # one entry per layer: derived again for the new depth
    cfg = transformers.Qwen2Config(**{**d, "num_hidden_layers": n + extra_layers})
    torch.manual_seed(seed)
    deep = transformers.Qwen2ForCausalLM(cfg).float()
    sd = deep.state_dict()
    with torch.no_grad():
        for name, p in sd.items():
            p.copy_(torch.ones_like(p) if name.endswith("norm.weight")
                    else torch.randn_like(p) * (0.5 / p.shape[-1] ** 0.5 if p.dim() > 1 else 0.02))
        for i in range(n, n + extra_layers):
            sd[f"model.layers.{i}.self_attn.o_proj.weight"].mul_(scale)
            sd[f"model.layers.{i}.mlp.down_proj.weight"].mul_(scale)
        for name, p in model.state_dict().items():  # the shallow model's layers, embeddings and head
            sd[name].copy_(p)
    deep.load_state_dict(sd)
    return deep.eval()


def save_checkpoint(d: Path, model) -> Path:
    """A Hugging Face directory, written by transformers, with the bench tokenizer and chat template."""
    d = Path(d)
    d.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(str(d), safe_serialization=True)
    _tokenizer().save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>", "chat_template": QUICK_CHAT}, indent=1))
    return d


def write_pair(root: Path, *, hidden: int, layers: int, heads: int, kv_heads: int, extra_layers: int,
               scale: float, max_positions: int = 2048) -> tuple[Path, Path]:
    """An SLM and its deepened LLM as two checkpoint directories under ``root``."""
    slm = tiny_qwen2(hidden=hidden, layers=layers, heads=heads, kv_heads=kv_heads, seed=1,
                     max_positions=max_positions)
    llm = deepened(slm, extra_layers, scale, seed=2)
    return save_checkpoint(Path(root) / "slm", slm), save_checkpoint(Path(root) / "llm", llm)

