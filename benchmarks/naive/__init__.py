"""The obvious implementation on plain transformers, the baseline of ``gboost bench`` (issue 12)."""
from .backend import NaiveBackend, NaiveState
from .hf import hf_greedy, load_hf

__all__ = ["NaiveBackend", "NaiveState", "hf_greedy", "load_hf"]
