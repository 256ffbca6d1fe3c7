"""Evaluation loop: many ``solve`` requests in flight on one step executor, graded, with cost and CI.

    report = await run_eval(load_rows("../shared/data/gsm8k_test.jsonl"), executor, cfg,
                            limit=200, out_path="runs/gsm8k_gboost.jsonl", concurrency=16)
    print(report.summary())

Requests run concurrently (``asyncio``, at most ``concurrency`` at a time) on a single step
executor, so its scheduler batches steps of different questions together.
Each finished question is appended to ``out_path`` (JSON Lines) as it completes, and
the file is rewritten in dataset order at the end; ``<out>.summary.json`` holds the
report without the records.  A question whose ``solve`` raises is recorded with its
error and counted as wrong (``fail_fast=True`` stops the run instead).
"""
from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from contextlib import AbstractAsyncContextManager
from typing import Any, Callable, Sequence

from gboost.search.api import solve
from gboost.search.config import SearchConfig
from gboost.search.final import candidates
from gboost.cost import CostRecord

from .datasets import EvalRow, load_rows, rows_from_dicts
from .grading import grade

__all__ = ["run_eval", "EvalReport", "wilson_interval"]

_Z95 = 1.959963984540054


def wilson_interval(k: int, n: int, z: float = _Z95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion k/n (default 95%); (0, 1) when n = 0."""
    if n <= 0:
        return 0.0, 1.0
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    lo = 0.0 if k == 0 else max(0.0, centre - half)
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _candidates(res: Any, cfg: SearchConfig, row: EvalRow) -> list[dict]:
    """Every terminal path the search left, graded: what benchmarks/gsm8k_choice.py re-chooses
    under other final choices, and how often the right answer was found but not chosen."""
    out = []
    for c, node in candidates(res.root, cfg.step_delimiter):
        _, ok = grade(node.solution_text(cfg.step_delimiter), row.gold, row.kind)
        out.append({"id": c.id, "rewards": list(c.rewards), "visits": c.visits,
                    "has_answer": c.has_answer, "key": c.key, "correct": ok})
    return out


@dataclass
class EvalReport:
    method: str
    n: int
    correct: int
    accuracy: float
    ci95: tuple[float, float]
    errors: int
    cost: CostRecord                       #: sum of the per-request costs
    backend_cost: dict[str, Any] | None    #: what the executor's running total moved during the run
    wall_s: float
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    config: dict[str, Any] = field(default_factory=dict, repr=False)
    out_path: str | None = None
    resumed: int = 0                       #: records kept from an earlier run (resume=True)

    def to_dict(self, include_records: bool = False) -> dict[str, Any]:
        n = max(self.n, 1)
        d = {
            "method": self.method, "n": self.n, "correct": self.correct,
            "accuracy": self.accuracy, "ci95": list(self.ci95), "errors": self.errors,
            "cost": self.cost.to_dict(), "backend_cost": self.backend_cost,
            "per_question": {"slm_tokens": self.cost.slm_tokens / n, "llm_tokens": self.cost.llm_tokens / n,
                             "llm_calls": self.cost.llm_calls / n, "prm_tokens": self.cost.prm_tokens / n,
                             "base_tokens": self.cost.base_tokens / n},
            "wall_s": round(self.wall_s, 4), "config": self.config, "out_path": self.out_path,
            "resumed": self.resumed,
        }
        if include_records:
            d["records"] = self.records
        return d

    def summary(self) -> str:
        lo, hi = self.ci95
        return (f"{self.method}: accuracy {self.accuracy:.3f} ({self.correct}/{self.n}, 95% CI "
                f"{lo:.3f}-{hi:.3f}), errors {self.errors}, llm_calls {self.cost.llm_calls}, "
                f"llm_tokens {self.cost.llm_tokens}, slm_tokens {self.cost.slm_tokens}, {self.wall_s:.1f}s")


def _config_path(out_path: Path) -> Path:
    return out_path.with_name(out_path.stem + ".config.json")


def _resume_records(out_path: Path, cfg: SearchConfig) -> list[dict[str, Any]]:
    """Records of an earlier run of the same config (the last record of an idx wins); questions
    that ended in an error are dropped, so they are tried again."""
    if not out_path.exists():
        return []
    cp = _config_path(out_path)
    if not cp.exists():
        raise ValueError(f"cannot resume {out_path}: {cp.name} (the config it was run with) is missing")
    # a key the engine gained since that run, at its default, is the setting that run had
    # (a new key's default keeps the old behaviour)
    old = {**json.loads(json.dumps(SearchConfig().to_dict())), **json.loads(cp.read_text())}
    new = json.loads(json.dumps(cfg.to_dict()))
    diff = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    if diff:
        raise ValueError(f"cannot resume {out_path}: it was run with other settings ({', '.join(diff)})")
    by_idx: dict[int, dict[str, Any]] = {}
    for line in out_path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a killed run: that question is solved again
            by_idx[r["idx"]] = r
    return [r for r in by_idx.values() if r.get("error") is None]


async def _resolve_executor(executor_or_factory: Any) -> Any:
    b = executor_or_factory
    if hasattr(b, "expand") and hasattr(b, "score"):
        return b
    if callable(b):
        b = b()
        if inspect.isawaitable(b):
            b = await b
        return b
    raise TypeError("run_eval needs a StepExecutor or a (possibly async) callable returning one")


def _as_rows(rows: Any) -> list[EvalRow]:
    if isinstance(rows, (str, Path)):
        return load_rows(rows)
    rows = list(rows)
    if rows and not isinstance(rows[0], EvalRow):
        return rows_from_dicts(rows)
    return rows


async def run_eval(rows: Sequence[EvalRow] | Sequence[dict] | str | Path,
                   executor_or_factory: Any,
                   cfg: SearchConfig | None = None,
                   limit: int | None = None,
                   out_path: str | Path | None = None,
                   concurrency: int = 8,
                   *,
                   progress: bool = True,
                   fail_fast: bool = False,
                   on_record: Callable[[dict], Any] | None = None,
                   resume: bool = False,
                   admit: Callable[[], bool] | None = None,
                   slot: Callable[[], AbstractAsyncContextManager] | None = None) -> EvalReport:
    """Solve and grade ``rows`` (EvalRows, raw dicts or a dataset path) with ``cfg.method``.

    ``executor_or_factory``: a step executor, or a (sync or async) factory called once.
    ``resume``: keep the records already in ``out_path`` (written by a run of the same config,
    checked against ``<out>.config.json``) and solve only the questions they lack.
    ``admit``: asked as each question gets a slot; False skips it (no record) -- lets a
    time-boxed run stop starting questions while the ones in flight finish.
    ``slot``: a factory of async context managers held around each question, inside this run's
    own ``concurrency`` -- lets several runs in one process share one pool of in-flight slots.
    """
    cfg = cfg if cfg is not None else SearchConfig()
    if concurrency < 1:
        raise ValueError(f"concurrency must be >= 1, got {concurrency}")
    items = _as_rows(rows)
    if limit is not None:
        items = items[:limit]
    executor = await _resolve_executor(executor_or_factory)
    before = executor.cost.copy() if isinstance(getattr(executor, "cost", None), CostRecord) else None

    out_file = None
    records: list[dict[str, Any]] = []
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        records = _resume_records(out_path, cfg) if resume else []
        done = {r["idx"] for r in records}
        items = [r for r in items if r.idx not in done]
        _config_path(out_path).write_text(json.dumps(cfg.to_dict(), indent=1, sort_keys=True))
        out_file = open(out_path, "w", encoding="utf-8")
        for r in records:  # rewritten clean: a line cut short by a killed run is dropped
            out_file.write(json.dumps(r, ensure_ascii=False) + "\n")
        out_file.flush()
    elif resume:
        raise ValueError("resume needs out_path")

    from tqdm.auto import tqdm
    bar = tqdm(total=len(items), desc=f"eval {cfg.method}", disable=not progress, dynamic_ncols=True)
    sem = asyncio.Semaphore(concurrency)
    n_resumed = len(records)
    n_correct = sum(bool(r["correct"]) for r in records)
    t_start = time.perf_counter()

    async def one(row: EvalRow) -> None:
        nonlocal n_correct
        async with sem, (slot() if slot is not None else contextlib.nullcontext()):
            if admit is not None and not admit():
                return
            t0 = time.perf_counter()
            rec: dict[str, Any] = {"idx": row.idx, "id": row.id, "kind": row.kind, "question": row.question,
                                   "gold": row.gold}
            try:
                res = await solve(row.question, executor, cfg)
            except Exception as e:
                if fail_fast:
                    raise
                rec.update(pred=None, correct=False, answer=None, text="", steps=[], score=None,
                           cost=CostRecord().to_dict(),
                           error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc(limit=5))
            else:
                pred, ok = grade(res.text, row.gold, row.kind)
                rec.update(pred=pred, correct=ok, answer=res.answer, text=res.text, steps=res.steps,
                           score=res.score, cost=res.cost.to_dict(), error=None,
                           stats={k: res.stats.get(k) for k in ("simulations", "nodes", "stop_reason")},
                           candidates=_candidates(res, cfg, row))
            rec["wall_s"] = round(time.perf_counter() - t0, 4)
        records.append(rec)
        n_correct += bool(rec["correct"])
        if out_file is not None:
            out_file.write(json.dumps(rec, ensure_ascii=False) + "\n")
            out_file.flush()
        if on_record is not None:
            r = on_record(rec)
            if inspect.isawaitable(r):
                await r
        bar.update(1)
        bar.set_postfix(acc=f"{n_correct / len(records):.3f}")

    if n_resumed:
        bar.write(f"resumed {n_resumed} records from {out_path}; {len(items)} questions to go", file=sys.stderr)

    tasks = [asyncio.create_task(one(r)) for r in items]
    try:
        await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise
    finally:
        bar.close()
        if out_file is not None:
            out_file.close()

    records.sort(key=lambda r: r["idx"])
    total = CostRecord()
    for r in records:
        total.merge(CostRecord.from_dict(r["cost"]))
    n = len(records)
    errors = sum(r["error"] is not None for r in records)
    report = EvalReport(
        method=cfg.method, n=n, correct=n_correct, accuracy=n_correct / n if n else 0.0,
        ci95=wilson_interval(n_correct, n), errors=errors, cost=total,
        backend_cost=executor.cost.minus(before).to_dict() if before is not None else None,
        wall_s=time.perf_counter() - t_start, records=records, config=cfg.to_dict(),
        out_path=str(out_path) if out_path is not None else None, resumed=n_resumed)
    if out_path is not None:
        tmp = out_path.with_name(out_path.name + ".tmp")
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
        os.replace(tmp, out_path)
        summary_path = out_path.with_name(out_path.stem + ".summary.json")
        summary_path.write_text(json.dumps(report.to_dict(), indent=1))
    return report
