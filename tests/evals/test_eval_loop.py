import asyncio
import json
import re

import pytest

from gboost.evals.datasets import rows_from_dicts
from gboost.evals.loop import EvalReport, run_eval, wilson_interval
from toy_executor import ToyExecutor
from gboost.search.config import SearchConfig


def run(coro):
    return asyncio.run(coro)


QUESTIONS = [
    ("What is 2 + 3?", 5), ("What is 10 + 20?", 30), ("Hard: what is 4 + 4?", 8),
    ("What is 1 + 1?", 2), ("Hard: what is 7 + 6?", 13),
]


def rows():
    return rows_from_dicts([{"question": q, "answer": f"...\n#### {a}"} for q, a in QUESTIONS])


def adder(q, steps, action, i):
    """Solves a + b in two steps; gets 'Hard' questions wrong unless the LLM helps."""
    a, b = map(int, re.findall(r"\d+", q))
    if not steps:
        return f"We add {a} and {b}."
    wrong = q.startswith("Hard") and action == "slm"
    return f"The answer is {a + b + (1 if wrong else 0)}."


def prm(q, steps):
    return 0.9


def test_wilson_interval_known_values():
    lo, hi = wilson_interval(3, 5)
    assert (round(lo, 4), round(hi, 4)) == (0.2307, 0.8824)
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0 and round(hi, 4) == 0.2775
    lo, hi = wilson_interval(10, 10)
    assert round(lo, 4) == 0.7225 and hi == 1.0
    assert wilson_interval(0, 0) == (0.0, 1.0)
    with pytest.raises(ValueError):
        wilson_interval(6, 5)


def test_eval_loop_accuracy_ci_cost_and_records(tmp_path):
    b = ToyExecutor(adder, prm, latency_s=0.002)
    out = tmp_path / "runs" / "slm.jsonl"
    rep = run(run_eval(rows(), b, SearchConfig(method="slm"), out_path=out, concurrency=3, progress=False))
    assert isinstance(rep, EvalReport)
    assert (rep.n, rep.correct, rep.errors) == (5, 3, 0)
    assert rep.accuracy == pytest.approx(0.6)
    assert tuple(round(x, 4) for x in rep.ci95) == (0.2307, 0.8824)
    assert b.max_inflight == 3  # concurrency-bounded requests overlapped on one backend
    assert rep.cost.llm_calls == 0 and rep.cost.slm_tokens == b.cost.slm_tokens
    assert rep.backend_cost["slm_tokens"] == b.cost.slm_tokens
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["idx"] for l in lines] == [0, 1, 2, 3, 4]  # rewritten in dataset order
    assert [l["correct"] for l in lines] == [True, True, False, True, False]
    assert lines[2]["pred"] == "9" and lines[2]["gold"] == "8"
    assert set(lines[0]) >= {"question", "gold", "pred", "correct", "cost", "steps", "error", "wall_s"}
    assert lines[0]["steps"][1] == {"text": "The answer is 5.", "action": "slm", "reward": 0.9}
    summary = json.loads((tmp_path / "runs" / "slm.summary.json").read_text())
    assert summary["accuracy"] == pytest.approx(0.6) and summary["n"] == 5
    d = rep.to_dict()
    assert d["ci95"] == list(rep.ci95) and "records" not in d
    assert "accuracy 0.600 (3/5" in rep.summary()
    assert not b.live


def test_eval_loop_fusion_fixes_the_hard_ones_and_limit():
    b = ToyExecutor(adder, prm)
    rep = run(run_eval(rows(), b, SearchConfig(method="fusion"), progress=False))
    assert rep.correct == 5 and rep.cost.llm_calls == 10
    rep = run(run_eval(rows(), ToyExecutor(adder, prm), SearchConfig(method="fusion"), limit=2, progress=False))
    assert rep.n == 2


def test_eval_loop_gboost_uses_collab_where_it_helps():
    def reward(q, steps):
        return 0.2 if steps[-1] == "The answer is 9." or steps[-1] == "The answer is 14." else 0.9

    b = ToyExecutor(adder, reward)
    rep = run(run_eval(rows(), b, SearchConfig(num_simulations=4), progress=False))
    assert rep.correct == 5
    assert [r["steps"][-1]["action"] for r in rep.records][2] == "collab"


def test_eval_loop_records_errors_and_factories():
    calls = {"n": 0}

    class Flaky(ToyExecutor):
        async def root(self, question):
            calls["n"] += 1
            if "10 + 20" in question:
                raise RuntimeError("engine hiccup")
            return await super().root(question)

    rep = run(run_eval(rows(), lambda: Flaky(adder, prm), SearchConfig(method="slm"), progress=False))
    assert rep.errors == 1 and rep.correct == 2 and rep.n == 5
    bad = rep.records[1]
    assert bad["error"] == "RuntimeError: engine hiccup" and bad["correct"] is False

    async def make():
        return ToyExecutor(adder, prm)

    rep = run(run_eval(rows(), make, SearchConfig(method="slm"), progress=False))
    assert rep.correct == 3

    with pytest.raises(RuntimeError, match="hiccup"):
        run(run_eval(rows(), Flaky(adder, prm), SearchConfig(method="slm"), progress=False, fail_fast=True))
    with pytest.raises(TypeError):
        run(run_eval(rows(), 42, SearchConfig(), progress=False))
    with pytest.raises(ValueError):
        run(run_eval(rows(), ToyExecutor(), SearchConfig(), concurrency=0, progress=False))


def test_eval_loop_reads_a_path(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text("\n".join(json.dumps({"question": q, "answer": f"#### {a}"}) for q, a in QUESTIONS))
    seen = []
    rep = run(run_eval(str(p), ToyExecutor(adder, prm), SearchConfig(method="slm"), progress=False,
                       on_record=seen.append))
    assert rep.correct == 3 and sorted(r["idx"] for r in seen) == [0, 1, 2, 3, 4]


def test_eval_loop_time_box_then_resume(tmp_path):
    out = tmp_path / "slm.jsonl"
    cfg = SearchConfig(method="slm")
    started = []

    def admit():  # a time box that closes after two questions have started
        started.append(1)
        return len(started) <= 2

    first = run(run_eval(rows(), ToyExecutor(adder, prm), cfg, out_path=out, concurrency=1, progress=False,
                         admit=admit))
    assert first.n == 2 and [r["idx"] for r in first.records] == [0, 1]
    with open(out, "a") as f:
        f.write('{"idx": 4, "correct": tr')  # a record cut short by a killed run
    b = ToyExecutor(adder, prm)
    rep = run(run_eval(rows(), b, cfg, out_path=out, concurrency=2, progress=False, resume=True))
    assert sum(c[0] == "root" for c in b.calls) == 3  # only the questions without a record are solved
    assert (rep.n, rep.correct, rep.resumed) == (5, 3, 2)
    lines = [json.loads(l) for l in out.read_text().splitlines()]
    assert [l["idx"] for l in lines] == [0, 1, 2, 3, 4]
    assert json.loads((tmp_path / "slm.summary.json").read_text())["n"] == 5
    # a different config must not be mixed into the same records
    with pytest.raises(ValueError, match="other settings.*temperature"):
        run(run_eval(rows(), ToyExecutor(adder, prm), SearchConfig(method="slm", temperature=0.3),
                     out_path=out, progress=False, resume=True))
    with pytest.raises(ValueError, match="needs out_path"):
        run(run_eval(rows(), ToyExecutor(adder, prm), cfg, progress=False, resume=True))


def test_resume_reads_a_key_added_since_the_run_as_its_default(tmp_path):
    out = tmp_path / "slm.jsonl"
    cfg = SearchConfig(method="slm")
    run(run_eval(rows()[:2], ToyExecutor(adder, prm), cfg, out_path=out, progress=False))
    cp = tmp_path / "slm.config.json"
    saved = json.loads(cp.read_text())
    del saved["gate_replaces"]  # as written before the engine had the key
    cp.write_text(json.dumps(saved))
    rep = run(run_eval(rows(), ToyExecutor(adder, prm), cfg, out_path=out, progress=False, resume=True))
    assert rep.resumed == 2 and rep.n == 5
    with pytest.raises(ValueError, match="other settings.*gate_replaces"):
        run(run_eval(rows(), ToyExecutor(adder, prm), SearchConfig(method="slm", gate_replaces=True),
                     out_path=out, progress=False, resume=True))


def test_eval_loop_resume_retries_errors(tmp_path):
    out = tmp_path / "slm.jsonl"

    class Flaky(ToyExecutor):
        async def root(self, question):
            if "10 + 20" in question:
                raise RuntimeError("engine hiccup")
            return await super().root(question)

    cfg = SearchConfig(method="slm")
    assert run(run_eval(rows(), Flaky(adder, prm), cfg, out_path=out, progress=False)).errors == 1
    b = ToyExecutor(adder, prm)
    rep = run(run_eval(rows(), b, cfg, out_path=out, progress=False, resume=True))
    assert sum(c[0] == "root" for c in b.calls) == 1 and rep.errors == 0 and rep.correct == 3


def test_eval_loop_runs_share_one_slot_pool():
    """Two runs in one process, each allowed 3 in flight, held to 2 in flight together."""
    pool = asyncio.Semaphore(2)
    inflight, peak = [0], [0]

    class Counting(ToyExecutor):
        async def root(self, question):
            inflight[0] += 1
            peak[0] = max(peak[0], inflight[0])
            try:
                await asyncio.sleep(0.01)
                return await super().root(question)
            finally:
                inflight[0] -= 1

    async def both():
        return await asyncio.gather(*(
            run_eval(rows(), Counting(adder, prm), SearchConfig(method=m), concurrency=3,
                     progress=False, slot=lambda: pool)
            for m in ("slm", "fusion")))

    slm, fusion = run(both())
    assert peak[0] == 2
    assert (slm.n, slm.correct, fusion.n, fusion.correct) == (5, 3, 5, 5)


@pytest.mark.parametrize("final_choice", ["best_path", "weighted_vote"])
def test_records_list_every_terminal_path_and_the_final_rule_rechooses_the_answer(final_choice):
    def misled(q, steps):  # the PRM prefers the SLM's wrong sums: the right one is found, not chosen
        return 0.95 if steps[-1] in ("The answer is 9.", "The answer is 14.") else 0.6

    from gboost.search.final import Candidate, pick_final
    cfg = SearchConfig(num_simulations=6, final_choice=final_choice)
    rep = run(run_eval(rows(), ToyExecutor(adder, misled), cfg, progress=False))
    for r in rep.records:
        cands = r["candidates"]
        assert cands and all(set(c) == {"id", "rewards", "visits", "has_answer", "key", "correct"} for c in cands)
        got = pick_final([Candidate(c["id"], tuple(c["rewards"]), c["visits"], c["has_answer"], c["key"])
                          for c in cands], final_choice, cfg.prm_aggregation)
        chosen = next(c for c in cands if c["id"] == got.id)
        assert chosen["correct"] == r["correct"] and chosen["rewards"][-1] == r["steps"][-1]["reward"]
    hard = [r for r in rep.records if r["question"].startswith("Hard")]
    assert all(not r["correct"] and any(c["correct"] for c in r["candidates"]) for r in hard)
