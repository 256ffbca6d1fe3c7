"""solve(): dispatch, streaming, result shape, and that every backend state is released."""
import asyncio
import json

import pytest

from gboost.search.api import SolveResult, solve
from gboost.search.protocol import StepExecutor, StepOut
from toy_executor import ToyExecutor
from gboost.search.config import METHODS, SearchConfig


def run(coro):
    return asyncio.run(coro)


def step(q, steps, action, i):
    d = len(steps) + 1
    return f"{action}{i} d{d}: The answer is {d + i}." if d == 3 else f"{action}{i} d{d}"


def reward(q, steps):
    return 0.3 + 0.1 * (len(steps[-1]) % 5)


def test_toy_backend_satisfies_the_protocol():
    assert isinstance(ToyExecutor(), StepExecutor)
    assert not isinstance(object(), StepExecutor)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_answers_and_releases_every_state(method):
    b = ToyExecutor(step, reward)
    res = run(solve("What is 1 + 2?", b, SearchConfig(method=method, num_simulations=8)))
    assert isinstance(res, SolveResult) and res.method == method
    assert res.answer is not None and res.steps
    assert res.text == "\n\n".join(s["text"] for s in res.steps)
    assert set(res.steps[0]) == {"text", "action", "reward"}
    assert b.n_created > 1 and b.n_released == b.n_created and not b.live
    assert all(n.state is None for n in res.root.iter_nodes())
    assert res.cost.wall_s["total"] > 0
    d = res.to_dict(include_tree=True)
    json.dumps(d)
    assert d["tree"]["chosen"] == [n.id for n in res.chosen]


def test_default_toy_backend_gboost_finds_the_right_sum():
    b = ToyExecutor()
    res = run(solve("What is 3 + 4?", b, SearchConfig()))
    assert res.answer == "7" and "slip" not in res.text


def test_on_step_after_search_for_gboost_sync_and_async():
    got = []
    res = run(solve("q", ToyExecutor(step, reward), SearchConfig(num_simulations=6), on_step=got.append))
    assert [g["text"] for g in got] == [s["text"] for s in res.steps]
    assert [g["index"] for g in got] == list(range(len(res.steps)))

    got2 = []

    async def cb(s):
        await asyncio.sleep(0)
        got2.append(s["action"])

    res = run(solve("q", ToyExecutor(step, reward), SearchConfig(method="fusion"), on_step=cb))
    assert got2 == ["collab"] * 3


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("method", METHODS)
def test_states_released_when_score_fails(method):
    b = ToyExecutor(step, reward)
    calls = {"n": 0}
    orig = b.score

    async def score(states):
        calls["n"] += 1
        if calls["n"] == 2:
            raise Boom("prm died")
        return await orig(states)

    b.score = score
    with pytest.raises(Boom):
        run(solve("q", b, SearchConfig(method=method, num_simulations=8)))
    assert not b.live and b.n_created == b.n_released and b.n_created > 1


def test_states_released_when_one_concurrent_expand_fails():
    b = ToyExecutor(step, reward)
    orig = b.expand

    async def expand(state, action, n, first=0):
        if action == "collab" and state.depth == 1:
            await asyncio.sleep(0)
            raise Boom("llm died")
        return await orig(state, action, n, first)

    b.expand = expand
    with pytest.raises(Boom):
        run(solve("q", b, SearchConfig(num_simulations=8)))
    # the slm children created by the sibling call in the same gather were released too
    assert b.n_created > 4 and not b.live and b.n_created == b.n_released


def test_states_released_when_on_step_raises():
    b = ToyExecutor(step, reward)

    def cb(s):
        raise Boom("client went away")

    with pytest.raises(Boom):
        run(solve("q", b, SearchConfig(method="slm"), on_step=cb))
    assert not b.live and b.n_created == 2


def test_states_released_on_cancellation():
    b = ToyExecutor(step, reward, latency_s=0.01)

    async def main():
        t = asyncio.create_task(solve("q", b, SearchConfig(num_simulations=50)))
        await asyncio.sleep(0.035)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(main())
    assert b.n_created > 1 and not b.live


def test_bad_backend_output_is_reported_clearly():
    class Bad(ToyExecutor):
        async def expand(self, state, action, n, first=0):
            outs = await super().expand(state, action, n, first)
            return [StepOut(o.text, o.token_ids, o.state, o.terminal, "llm") for o in outs]

    b = Bad(step, reward)
    with pytest.raises(ValueError, match="returned a step labelled 'llm'"):
        run(solve("q", b, SearchConfig(method="slm")))
    assert not b.live

    class Short(ToyExecutor):
        async def score(self, states):
            return (await super().score(states))[:-1]

    b = Short(step, reward)
    with pytest.raises(ValueError, match="returned 2 rewards for 3 states"):
        run(solve("q", b, SearchConfig()))
    assert not b.live


def test_concurrent_requests_share_a_backend():
    b = ToyExecutor(step, reward, latency_s=0.001)

    async def main():
        return await asyncio.gather(*(solve(f"q{i}", b, SearchConfig(num_simulations=4)) for i in range(5)))

    results = run(main())
    assert len(results) == 5 and all(r.answer for r in results)
    assert b.max_inflight == 10  # 5 requests x (slm + collab) in flight together
    assert not b.live
    per_request = sum(r.cost.llm_calls for r in results)
    assert per_request == b.cost.llm_calls


def test_cfg_type_checked():
    with pytest.raises(TypeError):
        run(solve("q", ToyExecutor(), {"method": "slm"}))


@pytest.mark.parametrize("delay", [0.005, 0.012, 0.019, 0.026, 0.033, 0.041])
def test_no_state_leaks_whenever_cancellation_lands(delay):
    """Cancel at many points, including while expand calls are finishing: nothing may leak."""
    b = ToyExecutor(step, reward, latency_s=0.007)

    async def main():
        t = asyncio.create_task(solve("q", b, SearchConfig(num_simulations=50)))
        await asyncio.sleep(delay)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(main())
    assert not b.live and b.n_created == b.n_released


@pytest.mark.parametrize("delay", [0.005, 0.012, 0.019, 0.026, 0.033, 0.041])
def test_no_state_leaks_when_cancelled_twice(delay):
    """A server at shutdown cancels a search that its handler is already cancelling: the second
    cancellation lands while the first one's cleanup waits for expansions. Nothing may leak."""
    b = ToyExecutor(step, reward, latency_s=0.007)

    async def main():
        t = asyncio.create_task(solve("q", b, SearchConfig(num_simulations=50)))
        await asyncio.sleep(delay)
        t.cancel()
        await asyncio.sleep(0)
        t.cancel()
        with pytest.raises(asyncio.CancelledError):
            await t

    run(main())
    assert not b.live and b.n_created == b.n_released


@pytest.mark.parametrize("turns", range(6))
def test_nested_settle_keeps_every_result_when_cancelled_again_during_cleanup(turns):
    """gboost's expand settles the backend's expands, which settle their children. A second
    cancellation, landing ``turns`` event-loop turns after the first one's children have ended
    (inside the inner settle's cleanup wait), must not drop a result that had already arrived."""
    from gboost.search.api import settle

    async def main():
        loop = asyncio.get_running_loop()
        orphans, outer = [], None

        async def done_early():
            return "state"  # finished before any cancellation: must reach on_orphan

        async def cancelled_leaf():
            try:
                await asyncio.sleep(10)
            except asyncio.CancelledError:
                def later(n):  # the second cancel, n loop turns from now
                    loop.call_soon(later, n - 1) if n else outer.cancel()
                later(turns)
                raise

        async def inner():
            return await settle([done_early(), cancelled_leaf()], orphans.append)

        outer = asyncio.create_task(settle([inner()], orphans.append))
        await asyncio.sleep(0.01)
        outer.cancel()
        with pytest.raises(asyncio.CancelledError):
            await outer
        await asyncio.sleep(0.01)
        return orphans

    assert run(main()) == ["state"]


