"""issue 32's searches through /v1/solve and the C ABI's solve: rsd@N (capped by the server like
every cost knob) and the tree whose simulations end in solutions, widened, greedy first children."""
import json

import httpx
import pytest

from gboost.search.config import SearchConfig
from gboost.testing import tiny_app, tiny_stack

pytestmark = pytest.mark.timeout(120)
SERVER = SearchConfig(max_step_tokens=6, max_depth=3, num_simulations=4, rsd_chains=4, rsd_threshold=0.5,
                      temperature=0.8, top_p=1.0)


@pytest.fixture
def srv(make_server):
    stack = tiny_stack(SERVER)
    app = tiny_app(stack)
    s = make_server(app.state.backend, solver=app.state.solver)
    s.stack = stack
    yield s
    stack.scheduler.close()


def post(srv, **body):
    return httpx.post(srv.url + "/v1/solve", json={"question": "What is 2+3?", "include_tree": True, **body},
                      timeout=60)


def test_rsd_at_n_runs_its_chains_and_a_request_cannot_raise_the_servers_cap(srv):
    r = post(srv, method="rsd", config={"rsd_chains": 3, "final_choice": "weighted_vote"})
    assert r.status_code == 200, r.text
    tree = r.json()["tree"]
    firsts = [n for n in tree["nodes"] if n["parent"] == tree["root"] and not n["pruned"]]
    assert len(firsts) == 3   # three chains from the root
    r = post(srv, method="rsd", config={"rsd_chains": 8})
    assert r.status_code == 400 and "rsd_chains=8 exceeds this server's limit of 4" in r.json()["error"]["message"]
    assert srv.stack.executor.counts.live_states == 0


def test_the_tree_of_solutions_runs_per_request(srv):
    r = post(srv, config={"simulate_to_terminal": True, "widen_to": 4, "greedy_first_child": True,
                          "final_choice": "weighted_vote"})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["stats"]["solutions"] >= 1 and out["steps"]
    assert srv.stack.executor.counts.live_states == 0 and srv.stack.engine.cache.live == {}
