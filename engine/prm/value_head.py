"""A step-value head: a small classifier on one resident model's hidden row at a step's last token.

Saved as `head.safetensors` + `card.json` in one directory. The card names the base model (its
name and a fingerprint of its weights), the decoder layer the features come from, and how the
head was trained; a head is refused on any other model, since its features would mean nothing.
Features: the layer's residual row, RMS-normalised (its scale grows with depth and position),
then standardised with the training set's mean and std.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

FORMAT = "gboost-value-head/1"
#: heads that ship with the package, one directory each: `--prm value-head:NAME`
SHIPPED = Path(__file__).resolve().parent.parent / "heads"


def shipped_heads() -> list[str]:
    return sorted(p.name for p in SHIPPED.iterdir() if (p / "card.json").is_file()) if SHIPPED.is_dir() else []


def head_dir(spec: str | Path) -> Path:
    """The directory a head is read from: `spec` when it exists, else the shipped head of that name
    (a directory the user names always wins over a shipped name)."""
    d = Path(spec)
    if d.exists():
        return d
    if str(spec) in shipped_heads():
        return SHIPPED / str(spec)
    raise FileNotFoundError(f"value head {str(spec)!r}: no such directory, and no head of that name ships with "
                            f"gboost (shipped: {', '.join(shipped_heads()) or 'none'})")


def model_fingerprint(model, adapter: str | None = None) -> str:
    """sha256 of a model's shape and of weight slices from its first, middle and last layers,
    rounded to bf16 first, so the same checkpoint loaded in fp32 or bf16 gives one fingerprint
    and a fine-tune of it (all weights move) gives another. ``adapter``: an unmerged LoRA adapter
    the model runs with (models/lora.py): the fingerprint of the weights merged with it."""
    from gboost.models.lora import weight_rows
    cfg = model.config
    h = hashlib.sha256(json.dumps([cfg.architecture, cfg.vocab_size, cfg.hidden_size, cfg.num_hidden_layers,
                                   cfg.num_attention_heads, cfg.num_key_value_heads]).encode())
    layers = model.model.layers
    for t in (model.model.embed_tokens.weight[:64], weight_rows(layers[0].mlp.down_proj, 16, adapter),
              weight_rows(layers[len(layers) // 2].mlp.down_proj, 16, adapter),
              weight_rows(layers[-1].self_attn.o_proj, 16, adapter), model.model.norm.weight):
        h.update(t.detach().to("cpu", torch.bfloat16).view(torch.int16).numpy().tobytes())
    return h.hexdigest()


@dataclass
class HeadCard:
    base_model: str               # the model's name as loaded (demo name, path or hub id)
    fingerprint: str              # model_fingerprint of that model
    hidden_size: int
    layer: int                    # 1-based decoder layer whose output is the feature row
    sequence: str                 # "slm": the SLM's own tokens; "text": chat prompt + each step + "\n\n"
    mlp_hidden: int = 0           # 0: logistic regression; else one hidden layer of this width
    labels: str = "outcome"       # outcome | mc (Math-Shepherd soft labels)
    metrics: dict[str, Any] = field(default_factory=dict)   # validation AUROC and friends
    training: dict[str, Any] = field(default_factory=dict)  # data, lines, samples, seeds, config
    format: str = FORMAT


class ValueHead(nn.Module):
    """feature row [.., H] -> logit of P(step leads to a right answer)."""

    def __init__(self, hidden_size: int, mlp_hidden: int = 0):
        super().__init__()
        self.register_buffer("mean", torch.zeros(hidden_size))
        self.register_buffer("std", torch.ones(hidden_size))
        self.net = (nn.Sequential(nn.Linear(hidden_size, mlp_hidden), nn.GELU(), nn.Linear(mlp_hidden, 1))
                    if mlp_hidden else nn.Linear(hidden_size, 1))

    @staticmethod
    def normalise(h: torch.Tensor) -> torch.Tensor:
        h = h.float()
        return h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        x = (self.normalise(h) - self.mean) / self.std
        return self.net(x)[..., 0]

    @torch.no_grad()
    def score(self, h: torch.Tensor) -> torch.Tensor:
        """Rewards in (0, 1)."""
        return torch.sigmoid(self(h))


def save_head(directory: str | Path, head: ValueHead, card: HeadCard) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in head.state_dict().items()}, str(d / "head.safetensors"))
    (d / "card.json").write_text(json.dumps(asdict(card), indent=1) + "\n")
    return d


def load_head(directory: str | Path) -> tuple[ValueHead, HeadCard]:
    """A head from its directory, or a shipped head by name (head_dir)."""
    d = head_dir(directory)
    card_path, weights = d / "card.json", d / "head.safetensors"
    for p in (card_path, weights):
        if not p.is_file():
            raise FileNotFoundError(f"value head {d}: {p.name} is missing (expected card.json and head.safetensors)")
    try:
        raw = json.loads(card_path.read_text())
        card = HeadCard(**raw)
    except (json.JSONDecodeError, TypeError) as e:
        raise ValueError(f"value head {card_path}: not a value-head card ({e})") from None
    if card.format != FORMAT:
        raise ValueError(f"value head {card_path}: format {card.format!r}, this engine reads {FORMAT!r}")
    head = ValueHead(card.hidden_size, card.mlp_hidden)
    try:
        head.load_state_dict(load_file(str(weights)))
    except RuntimeError as e:
        raise ValueError(f"value head {weights}: weights do not fit its card ({e})") from None
    return head.eval().requires_grad_(False), card


def check_base(card: HeadCard, model, name: str, adapter: str | None = None) -> None:
    """Refuse a head whose base model is not `model` (with `adapter`; clear message naming both)."""
    fp = model_fingerprint(model, adapter)
    if fp != card.fingerprint:
        raise ValueError(f"value head was trained on {card.base_model!r} (fingerprint {card.fingerprint[:12]}), "
                         f"not on {name!r} (fingerprint {fp[:12]}): train one for this model with "
                         f"`gboost train-prm`")
    if not 1 <= card.layer <= model.config.num_hidden_layers:
        raise ValueError(f"value head reads layer {card.layer}; {name!r} has {model.config.num_hidden_layers}")
