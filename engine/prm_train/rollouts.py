"""Stage 1 of `gboost train-prm`: K sampled solutions per question, written by the engine itself.

Each solution is a chain of steps through the search backend (so it is batched by the scheduler
with every other chain in flight); each step is an SLM step or, with probability `collab_share`,
a collaborative (fused) one, or with probability `llm_share` one the LLM writes alone (what a
search's delegated children are), so a head sees every kind it will score. Every step keeps its
token ids: the features of stage 2 are read at exactly the tokens the search will later score.
Records are appended to a JSONL file as chains finish, and a rerun skips the (line, k) pairs
already there (resumable).
"""
from __future__ import annotations

import asyncio
import json
import random
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from gboost.evals.datasets import EvalRow
from gboost.evals.grading import grade
from gboost.search.config import SearchConfig

Checker = Callable[[str, EvalRow], bool]


@dataclass
class RolloutPlan:
    samples: int = 4           # K solutions per question
    collab_share: float = 0.3  # chance that a step is collaborative (needs a general LLM)
    llm_share: float = 0.0     # chance that a step is the LLM's alone (needs a general LLM)
    mc_rollouts: int = 0       # M SLM completions per step for Math-Shepherd soft labels (0: off)
    concurrency: int = 16      # chains in flight (their forwards share batches)
    # A chain stops (and is graded as it stands, so it is wrong unless it already answered) once its
    # steps hold this many tokens: a degenerate chain can run max_depth x max_step_tokens tokens alone
    # at batch 1 after the others finish, minutes per solution on a CPU; GSM8K solutions need < 500.
    max_tokens: int | None = 1024

    def validate(self) -> None:
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {self.samples}")
        if not 0.0 <= self.collab_share <= 1.0:
            raise ValueError(f"collab_share must be in [0, 1], got {self.collab_share}")
        if not 0.0 <= self.llm_share <= 1.0 - self.collab_share:
            raise ValueError(f"llm_share must be in [0, 1 - collab_share], got {self.llm_share}")
        if self.mc_rollouts < 0:
            raise ValueError(f"mc_rollouts must be >= 0, got {self.mc_rollouts}")
        if self.concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {self.concurrency}")
        if self.max_tokens is not None and self.max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {self.max_tokens}")


def default_checker(text: str, row: EvalRow) -> bool:
    return grade(text, row.gold, row.kind)[1]


def chain_seed(base_seed: int, line: int, k: int, *salt: Any) -> int:
    return zlib.crc32(repr((base_seed, line, k) + salt).encode()) & 0x7FFFFFFF


def read_records(path: Path) -> dict[tuple[int, int], dict]:
    """(line, k) -> record of an earlier run; a line cut short by a killed run is skipped."""
    out: dict[tuple[int, int], dict] = {}
    if not path.exists():
        return out
    for text in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(text)
        except json.JSONDecodeError:
            continue
        out[(r["line"], r["k"])] = r
    return out


def _action(r: float, plan: RolloutPlan) -> str:
    """One uniform draw per step picks its writer (collab first: the draws of older runs stand)."""
    if r < plan.collab_share:
        return "collab"
    return "llm" if r < plan.collab_share + plan.llm_share else "slm"


async def _complete(backend, state) -> tuple[list[str], list]:
    """SLM steps from `state` to a terminal step; returns the new steps' texts and the states made."""
    texts, made = [], []
    while True:
        (out,) = await backend.expand(state, "slm", 1)
        made.append(out.state)
        texts.append(out.text)
        state = out.state
        if out.terminal:
            return texts, made


async def sample_chain(backend, cfg: SearchConfig, row: EvalRow, line: int, k: int, plan: RolloutPlan,
                       check: Checker) -> dict:
    """One solution of `row`, its steps with token ids and actions, graded; with mc_rollouts,
    each step's share of M SLM completions that reach the gold answer."""
    seed = chain_seed(cfg.seed, line, k)
    # the method only gates which actions the stack must support: chains need no more than the SLM
    be = backend.with_config(cfg.replace(seed=seed, method=cfg.method if backend.llm is not None else "slm"))
    rng = random.Random(seed)
    root = await be.root(row.question)
    held = [root]
    steps, mc = [], []
    n_tokens, truncated = 0, False
    try:
        prompt_ids = list(root.slm.token_ids)
        state = root
        while True:
            action = _action(rng.random(), plan) if be.llm is not None else "slm"
            (out,) = await be.expand(state, action, 1)
            held.append(out.state)
            steps.append({"text": out.text, "action": action, "fault": out.fault,
                          "token_ids": list(out.token_ids)})
            state = out.state
            n_tokens += len(out.token_ids)
            truncated = not out.terminal and plan.max_tokens is not None and n_tokens >= plan.max_tokens
            if plan.mc_rollouts and not out.terminal and not truncated:
                done = [s["text"] for s in steps]
                rolls = await asyncio.gather(*[_complete(be.with_config(be.cfg.replace(seed=chain_seed(
                    seed, line, k, len(steps), m))), state) for m in range(plan.mc_rollouts)])
                hits = 0
                for texts, made in rolls:
                    held.extend(made)
                    hits += check(cfg.step_delimiter.join(done + texts), row)
                mc.append(hits / plan.mc_rollouts)
            if out.terminal or truncated:
                break
    finally:
        for s in held:
            be.release(s)
    text = cfg.step_delimiter.join(s["text"] for s in steps)
    correct = bool(check(text, row))
    if plan.mc_rollouts:
        mc.append(float(correct))  # the last step's completion is the solution itself
    return {"line": line, "k": k, "seed": seed, "question": row.question, "gold": row.gold,
            "prompt_ids": prompt_ids, "steps": steps, "correct": correct, "truncated": truncated,
            "mc": mc if plan.mc_rollouts else None}


async def run_rollouts(backend, cfg: SearchConfig, rows: list[EvalRow], out_path: Path, plan: RolloutPlan,
                       check: Checker = default_checker, progress: bool = True) -> list[dict]:
    """Sample plan.samples chains for every row (skipping those already in out_path); returns all
    records, in (line, k) order. A failing chain fails the run: its partial work is not written."""
    plan.validate()
    out_path.parent.mkdir(parents=True, exist_ok=True)
    have = read_records(out_path)
    todo = [(row, row.idx + 1, k) for row in rows for k in range(plan.samples) if (row.idx + 1, k) not in have]
    sem = asyncio.Semaphore(plan.concurrency)
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(todo), desc="rollouts", unit="solution", dynamic_ncols=True)
    with out_path.open("a", encoding="utf-8") as f:
        async def one(row, line, k):
            async with sem:
                rec = await sample_chain(backend, cfg, row, line, k, plan, check)
            f.write(json.dumps(rec) + "\n")
            f.flush()
            have[(line, k)] = rec
            if bar is not None:
                bar.update(1)
        try:
            await asyncio.gather(*[one(*t) for t in todo])
        finally:
            if bar is not None:
                bar.close()
    wanted = {(row.idx + 1, k) for row in rows for k in range(plan.samples)}
    return [have[key] for key in sorted(wanted)]
