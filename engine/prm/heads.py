"""The `two_class` PRM model: a decoder whose LM head is replaced by a 2-way `score` head.

A token-pair (Math-Shepherd) or judge PRM is a plain causal LM and needs nothing here. A two-class
checkpoint is the decoder's `model.*` tensors plus a `score` head on the final (normed) hidden
rows, and no `lm_head.weight`. Two layouts are read, as they are saved:
  linear  `score.weight` [2, h] (+ `score.bias` [2]): transformers' Qwen2ForTokenClassification /
          ...ForSequenceClassification with num_labels=2
  mlp     `score.0.weight` [h, h], `score.0.bias`, `score.2.weight` [2, h], `score.2.bias`:
          Qwen2.5-Math-PRM's Qwen2ForProcessRewardModel, Linear -> ReLU -> Linear
Either way the reward is softmax(score row)[1] (engine/kernels/step_scoring.py, kind two_class).
"""
from __future__ import annotations

import torch
from torch import nn

from gboost.models.config import ModelConfig
from gboost.models.qwen2_llama import CausalLM, build_model

HEAD_PREFIX = "score."
_MLP = {"score.0.weight", "score.0.bias", "score.2.weight", "score.2.bias"}


def is_head_key(key: str) -> bool:
    """A tensor of a two-class score head (the loader keeps these beside the decoder's)."""
    return key.startswith(HEAD_PREFIX)


def has_score_head(state_dict: dict) -> bool:
    return any(is_head_key(k) for k in state_dict)


def _score_module(cfg: ModelConfig, head: dict[str, torch.Tensor]) -> nn.Module:
    h = cfg.hidden_size
    keys = set(head)
    if keys == _MLP:
        mod = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, 2))
    elif keys in ({"score.weight"}, {"score.weight", "score.bias"}):
        mod = nn.Linear(h, 2, bias="score.bias" in keys)
    else:
        raise ValueError("a two-class PRM checkpoint needs score.weight [2, hidden] (+ score.bias), or "
                         f"score.0/score.2 weights and biases; got {sorted(keys)}")
    # load_state_dict's error names a tensor of the wrong shape (e.g. a head with num_labels != 2)
    mod.load_state_dict({k[len(HEAD_PREFIX):]: v for k, v in head.items()})
    return mod


class TwoClassPRM(CausalLM):
    """The decoder with a `score` head instead of `lm_head`: logits are the head's 2 columns."""

    score: nn.Module

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.score(hidden).float()


def build_two_class_prm(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                        device: str = "cpu") -> TwoClassPRM:
    head = {k: v for k, v in state_dict.items() if is_head_key(k)}
    score = _score_module(cfg, head).to(device=device, dtype=dtype)
    base = build_model(cfg, None, dtype, device)
    base.lm_head = None  # the score head replaces it: a checkpoint's lm_head.weight, if any, is unused
    base.load_weights({k: v for k, v in state_dict.items() if not is_head_key(k) and k != "lm_head.weight"})
    prm = TwoClassPRM.__new__(TwoClassPRM)
    nn.Module.__init__(prm)
    prm.config, prm.model, prm.lm_head, prm.score = cfg, base.model, None, score
    return prm.eval().requires_grad_(False)


def build_resident(cfg: ModelConfig, state_dict: dict[str, torch.Tensor], dtype: torch.dtype,
                   device: str | torch.device = "cpu") -> CausalLM:
    """The model a checkpoint's tensors describe: a two-class PRM where it has a score head."""
    if has_score_head(state_dict):
        return build_two_class_prm(cfg, state_dict, dtype, device)
    return build_model(cfg, state_dict, dtype, device)
