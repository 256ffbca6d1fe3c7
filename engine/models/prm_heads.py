"""PRM model variants. A token-pair (Math-Shepherd) or judge PRM is a plain causal LM; a
two-class PRM (Qwen2.5-Math-PRM format) replaces the LM head with a 2-way score head."""
from __future__ import annotations

import torch
from torch import nn

from gboost.models.config import ModelConfig
from gboost.models.qwen2_llama import CausalLM, build_model


class TwoClassPRM(CausalLM):
    """Qwen2ForProcessRewardModel layout: `score = Linear(h, h) -> ReLU -> Linear(h, 2)`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg)
        h = cfg.hidden_size
        self.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden).float()


def build_two_class_prm(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                        device: str = "cpu") -> TwoClassPRM:
    head = {k: v for k, v in state_dict.items() if k.startswith("score.")}
    if set(head) != {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"}:
        raise ValueError(f"two-class PRM checkpoint needs score.0/score.2 weights and biases, got {sorted(head)}")
    body = {k: v for k, v in state_dict.items() if not k.startswith("score.")}
    base = build_model(cfg, body, dtype, device)
    prm = TwoClassPRM.__new__(TwoClassPRM)
    nn.Module.__init__(prm)
    prm.config, prm.model, prm.lm_head = cfg, base.model, base.lm_head
    h = cfg.hidden_size
    prm.score = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2)).to(device=device, dtype=dtype)
    prm.score.load_state_dict({k[len("score."):]: v for k, v in head.items()})
    return prm.eval().requires_grad_(False)
