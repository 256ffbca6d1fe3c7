"""The toy executor's cost conventions (what the search's tests count)."""
import pytest
from toy_executor import count_step

from gboost.cost import CostRecord


def test_count_step_conventions():
    c = CostRecord()
    count_step(c, "slm", 4, None)
    count_step(c, "collab", 3, None)
    count_step(c, "llm", 2, None)
    count_step(c, "collab", 5, "llm_timeout")
    assert (c.slm_tokens, c.llm_tokens, c.llm_calls) == (4 + 3 + 5, 3 + 2, 3)
    assert c.llm_faults == {"llm_timeout": 1}
    with pytest.raises(ValueError):
        count_step(c, "tool", 1, None)
    with c.timed("x"):
        pass
    assert c.wall_s["x"] >= 0
