"""The obvious implementation on plain transformers, the baseline of ``gboost bench`` (issue 12)."""
from .executor import NaiveExecutor, NaiveState
from .hf import hf_greedy, load_hf

__all__ = ["NaiveExecutor", "NaiveState", "hf_greedy", "load_hf"]
