"""POST /v1/solve on the real stack (tiny models, `gboost serve --solve` in process) with the engine on
each device: the CPU here, CUDA where there is one (gpu-marked, run by default there)."""
import json

import httpx
import pytest

from gboost.collab.executor import CollabOptions
from gboost.search.config import SearchConfig
from gboost.server.uvicorn_server import BackgroundServer
from gboost.testing import tiny_app, tiny_stack

pytestmark = pytest.mark.timeout(180)


@pytest.mark.parametrize("mode", ["speculative", "exact"])
def test_solve_request_on_the_engines_device(engine_device, mode):
    cfg = SearchConfig(max_step_tokens=6, max_depth=2, num_simulations=2, seed=1)
    stack = tiny_stack(cfg, num_blocks=256, device=engine_device, options=CollabOptions(collab_mode=mode, max_draft=3))
    assert stack.engine.cache.pool.device.type == engine_device
    with BackgroundServer(tiny_app(stack)) as srv:
        r = httpx.post(srv.url + "/v1/solve", json={"question": "What is 2 + 3?", "seed": 1}, timeout=120)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["steps"] and {"answer", "text", "cost", "stats"} <= set(body)
        assert body["cost"]["llm_calls"] >= 1  # gboost expands collaborative children too
        again = httpx.post(srv.url + "/v1/solve", json={"question": "What is 2 + 3?", "seed": 1, "stream": True},
                           timeout=120)
        events = [json.loads(b[len("data: "):]) for b in again.text.split("\n\n") if b.startswith("data: {")]
        assert events[-1]["object"] == "solve.result"
        assert events[-1]["text"] == body["text"]  # same seed, same answer, streamed or not
        cache = stack.engine.cache
        assert cache.live == {} and cache.blocks.num_free() == cache.blocks.num_blocks
        cache.check_refcounts()
