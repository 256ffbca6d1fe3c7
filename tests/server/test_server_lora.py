"""Several LoRA adapters on one resident SLM, named per request over real HTTP: /v1/completions
and chat by ``model`` (vLLM's --lora-modules convention), /v1/solve by ``adapter``; /v1/models
lists them with their parent; an unknown name is a 404 that loses nothing."""
import asyncio

import httpx
import pytest

from gboost.sampling import SamplingParams
from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.testing import random_adapter, tiny_app, tiny_stack

pytestmark = pytest.mark.timeout(120)
CFG = SearchConfig(max_step_tokens=6, max_depth=2, num_simulations=2, temperature=0.0, top_p=1.0)
PROMPT = [72, 105, 32, 116, 104, 101, 114, 101]   # "Hi there" in the byte tokenizer


@pytest.fixture
def lora_server(make_server):
    stack = _with_adapters(tiny_stack(CFG))
    app = tiny_app(stack)
    srv = make_server(app.state.backend, solver=app.state.solver)
    srv.stack = stack
    yield srv
    stack.scheduler.close()


def _with_adapters(stack):
    eng = stack.engine
    for name, seed in (("alpha", 11), ("beta", 12)):
        eng.add_adapter(name, random_adapter(eng.role("slm").config, seed), model=eng.roles["slm"])
    return stack


def _complete(srv, model):
    r = httpx.post(srv.url + "/v1/completions", json={"model": model, "prompt": PROMPT, "max_tokens": 6,
                                                      "temperature": 0}, timeout=30)
    return r


def test_each_request_gets_its_adapter_and_the_batch_is_shared(lora_server):
    srv = lora_server
    outs = {m: _complete(srv, m).json() for m in ("tiny", "alpha", "beta")}
    assert all(o["model"] == m for m, o in outs.items())
    texts = {m: o["choices"][0]["text"] for m, o in outs.items()}
    assert len(set(texts.values())) == 3, texts      # three different models answered
    # each equals what an engine of its own (same weights, same adapters) generates with that adapter
    ref = _with_adapters(tiny_stack(CFG))
    for m, text in texts.items():
        out = ref.engine.generate([PROMPT], SamplingParams(temperature=0.0, max_tokens=6, stop_token_ids=[256],
                                                           ignore_eos=True), adapter=None if m == "tiny" else m)[0]
        assert out.text == text, m
    ref.scheduler.close()
    # the same name twice gives the same greedy tokens (nothing leaked from the other adapters)
    assert _complete(srv, "alpha").json()["choices"][0]["text"] == texts["alpha"]
    cards = httpx.get(srv.url + "/v1/models", timeout=10).json()["data"]
    assert [(c["id"], c["parent"]) for c in cards] == [("tiny", None), ("alpha", "tiny"), ("beta", "tiny")]
    chat = httpx.post(srv.url + "/v1/chat/completions", json={"model": "beta", "max_tokens": 4, "temperature": 0,
                                                               "messages": [{"role": "user", "content": "Hi"}]},
                      timeout=30)
    # routed to beta's view (not a 404): the tiny model has no chat template, which beta's view says
    assert chat.status_code == 400 and "no chat template" in chat.json()["error"]["message"]


def test_an_unknown_model_or_adapter_is_a_404_and_loses_nothing(lora_server):
    srv = lora_server
    r = _complete(srv, "gamma")
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    r = httpx.post(srv.url + "/v1/solve", json={"question": "What is 2+3?", "adapter": "gamma"}, timeout=30)
    assert r.status_code == 404 and r.json()["error"]["param"] == "adapter"
    assert srv.stack.executor.counts.live_states == 0 and srv.stack.engine.cache.live == {}


def test_solve_runs_the_requests_adapter(lora_server):
    srv = lora_server
    stack = srv.stack
    got = {a: httpx.post(srv.url + "/v1/solve", json={"question": "What is 2+3?", "method": "slm",
                                                      **({"adapter": a} if a else {})}, timeout=60).json()
           for a in (None, "alpha")}
    steps = {a: [s["text"] for s in g["steps"]] for a, g in got.items()}
    assert steps[None] != steps["alpha"]
    ref = _with_adapters(tiny_stack(CFG))
    direct = asyncio.run(solve("What is 2+3?", ref.executor.with_adapter("alpha"), CFG.replace(method="slm")))
    assert [s["text"] for s in direct.steps] == steps["alpha"]
    ref.scheduler.close()
    again = httpx.post(srv.url + "/v1/solve", json={"question": "What is 2+3?", "method": "slm", "adapter": "alpha"},
                       timeout=60).json()
    assert [s["text"] for s in again["steps"]] == steps["alpha"]
    assert stack.executor.counts.live_states == 0 and stack.engine.cache.live == {}


def test_a_value_head_on_the_slm_rows_refuses_an_adapter_it_was_not_trained_on():
    from gboost.server.errors import APIError
    from gboost.server.solve import SolveRequest, Solver
    stack = _with_adapters(tiny_stack(CFG))
    seen = []

    class HeadOnSLMRows:  # what ValueHeadScorer offers: check_rows raises for rows it does not know
        reads_slm = True

        def check_rows(self, resident):
            seen.append(resident.adapter)
            raise ValueError("value head was trained on 'tiny-1', not on 'tiny-1' with adapter alpha")
    stack.executor.prm = HeadOnSLMRows()
    solver = Solver(stack.executor, CFG)
    with pytest.raises(APIError) as e:
        solver.executor_for(SolveRequest(question="q", adapter="alpha"))
    assert e.value.status == 400 and "not on 'tiny-1' with adapter alpha" in e.value.message and seen == ["alpha"]
    assert solver.executor_for(SolveRequest(question="q")) is stack.executor
    stack.scheduler.close()


def test_metrics_say_each_models_weight_format(lora_server):
    text = httpx.get(lora_server.url + "/metrics").text
    formats = lora_server.stack.engine.weight_formats
    assert formats and all(f'gboost_model_weights_info{{model="{m}",format="{f}"}} 1' in text
                           for m, f in formats.items())
