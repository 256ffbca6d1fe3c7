"""What a search node holds on the engine side: its SLM sequence and, with a PRM that reads its own
sequence, the PRM's. Each is forked from the parent's, so a path's prefix is computed once per model."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from gboost.kv.cache import Sequence


@dataclass
class NodeState:
    slm: Sequence
    prm: Sequence | None
    depth: int
    key: tuple               # path of (action, index) from the root: seeds the node's sampling
    steps: list[str] = field(default_factory=list)
    step_tokens: int = 0     # tokens of the newest step
    # SLM logits after the last token, once a value head's score computed that token: the
    # children's first draw reads them instead of computing the token again
    ready: torch.Tensor | None = None
    question: str = ""       # the request's question (a delegated step sends it to the LLM)
