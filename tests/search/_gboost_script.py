"""What the G-Boost tests on a scripted executor share: a runner, labelled steps, table rewards,
a small config and the paths the search asked to expand."""
import asyncio

from gboost.search.config import SearchConfig


def run(coro):
    return asyncio.run(coro)


def labelled_step(question, steps, action, i):
    """Unique text per (depth, action, sample): 'd2-collab0'."""
    return f"d{len(steps) + 1}-{action}{i}"


def table_reward(table, default=0.5):
    return lambda q, steps: table.get(steps[-1], default)


def cfg(**kw):
    base = dict(num_simulations=4, uct_c=1.0, slm_width=2, collab_width=1, max_depth=10,
                max_llm_faults=None, finish_unterminated=False)
    base.update(kw)
    return SearchConfig(**base)


def expanded_paths(backend):
    return [(c[4], c[2], c[3]) for c in backend.expand_calls()]
