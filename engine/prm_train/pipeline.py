"""`gboost train-prm`: rollouts -> step labels -> hidden rows -> a value head, in one directory.

    OUT/rollouts.jsonl             K solutions per question, steps with token ids (resumable)
    OUT/features.<model>.safetensors  step-end rows of the candidate layers (reused on a rerun)
    OUT/card.json, head.safetensors   the chosen head: `--prm value-head:OUT`
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from gboost.evals.datasets import EvalRow
from gboost.prm.value_head import HeadCard, model_fingerprint, save_head
from gboost.search.config import SearchConfig

from .features import extract, slm_solution, text_solution
from .fit import PATH_AGGREGATIONS, FitConfig, auroc, fit_head
from .rollouts import Checker, RolloutPlan, default_checker, run_rollouts


@dataclass
class TrainPlan:
    rollouts: RolloutPlan = field(default_factory=RolloutPlan)
    features: str = "slm"           # slm: the SLM's own rows | llm: the general LLM's (text layout)
    layers: list[int] | None = None  # candidate decoder layers (1-based); None: 1/2, 3/4 and all of the depth
    labels: str = "outcome"         # outcome | mc (needs rollouts.mc_rollouts > 0)
    fit: FitConfig = field(default_factory=FitConfig)

    def validate(self) -> None:
        self.rollouts.validate()
        if self.features not in ("slm", "llm"):
            raise ValueError(f"features must be slm or llm, got {self.features!r}")
        if self.labels not in ("outcome", "mc"):
            raise ValueError(f"labels must be outcome or mc, got {self.labels!r}")
        if self.labels == "mc" and self.rollouts.mc_rollouts < 1:
            raise ValueError("labels='mc' needs mc_rollouts >= 1")


def step_labels(rec: dict, kind: str) -> list[float]:
    """outcome: every step takes its solution's grade; mc: each step's share of completions that
    reached the gold answer (the last step's is the solution's own grade)."""
    if kind == "mc":
        return [float(x) for x in rec["mc"]]
    return [float(rec["correct"])] * len(rec["steps"])


def default_layers(num_layers: int) -> list[int]:
    return sorted({max(1, num_layers // 2), max(1, (3 * num_layers) // 4), num_layers})


def _features(resident, cache, records: list[dict], plan: TrainPlan, path: Path, layers: list[int],
              progress: bool) -> dict[int, list[torch.Tensor]]:
    """Step-end rows per layer and solution, reused from `path` when it holds these records' rows."""
    key = json.dumps([[r["line"], r["k"]] for r in records])
    if path.exists():
        saved = load_file(str(path))
        meta = json.loads(bytes(saved.pop("meta").tolist()).decode())
        if meta["records"] == key and all(f"layer{l}" in saved for l in layers):
            sizes = [len(r["steps"]) for r in records]
            return {l: list(torch.split(saved[f"layer{l}"], sizes)) for l in layers}
    if plan.features == "slm":
        sols = [slm_solution(r) for r in records]
    else:
        sols = [text_solution(resident.tokenizer, r) for r in records]
    feats = extract(resident, cache, sols, layers, progress=progress)
    blob = {f"layer{l}": torch.cat(v) for l, v in feats.items()}
    blob["meta"] = torch.tensor(list(json.dumps({"records": key}).encode()), dtype=torch.uint8)
    save_file(blob, str(path))
    return feats


async def train_prm(backend, cfg: SearchConfig, rows: list[EvalRow], out: str | Path, plan: TrainPlan, *,
                    check: Checker = default_checker, data_desc: dict | None = None,
                    progress: bool = True) -> tuple[HeadCard, list[dict]]:
    """Run all stages with `backend` (an EngineExecutor without a PRM); returns the saved head's
    card and the rollout records."""
    plan.validate()
    out = Path(out)
    records = await run_rollouts(backend, cfg, rows, out / "rollouts.jsonl", plan.rollouts, check, progress)
    card = fit_records(backend.engine, cfg, records, out, plan,
                       {"data": data_desc or {}}, progress)
    return card, records


def fit_records(engine, cfg: SearchConfig, records: list[dict], out: str | Path, plan: TrainPlan,
                desc: dict | None = None, progress: bool = True) -> HeadCard:
    """Stages 2-4 on rollout records already made: features, labels, the head, saved in `out`."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    role = "slm" if plan.features == "slm" else "llm"
    if role not in engine.roles:
        raise ValueError("features='llm' needs a resident (local) general LLM")
    resident = engine.role(role)
    n_layers = resident.config.num_hidden_layers
    layers = plan.layers or default_layers(n_layers)
    bad = [l for l in layers if not 1 <= l <= n_layers]
    if bad:
        raise ValueError(f"layers {bad} outside 1..{n_layers} of {resident.key}")
    feats = _features(resident, engine.cache, records, plan, out / f"features.{role}.safetensors", layers, progress)
    y = torch.tensor([v for r in records for v in step_labels(r, plan.labels)])
    groups = [r["line"] for r in records for _ in r["steps"]]
    sols = [(r["line"], r["k"]) for r in records for _ in r["steps"]]
    fits = {l: fit_head(torch.cat(feats[l]), y, groups, plan.fit, sols) for l in layers}
    best = max(layers, key=lambda l: (fits[l].metrics["auroc_val_steps"] or 0.0, -l))  # None: no signal seen
    card = HeadCard(
        base_model=resident.key, fingerprint=model_fingerprint(resident.model, resident.adapter),
        hidden_size=resident.config.hidden_size, layer=best,
        sequence="slm" if plan.features == "slm" else "text", mlp_hidden=plan.fit.mlp_hidden, labels=plan.labels,
        metrics={**fits[best].metrics, "by_layer": {str(l): fits[l].metrics["auroc_val_steps"] for l in layers}},
        training={**(desc or {}), "questions": len({r["line"] for r in records}), "solutions": len(records),
                  "steps": len(y), "solutions_correct": sum(r["correct"] for r in records),
                  "rollouts": asdict(plan.rollouts), "fit": asdict(plan.fit),
                  "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "seed": cfg.seed,
                               "max_depth": cfg.max_depth, "max_step_tokens": cfg.max_step_tokens}})
    save_head(out, fits[best].head, card)
    return card


def path_auroc(scores_by_solution: list[list[float]], correct: list[bool], how: str) -> float:
    """AUROC, right against wrong solutions, of a path score aggregated over its step scores."""
    agg = PATH_AGGREGATIONS[how]
    return auroc([agg(v) for v in scores_by_solution], [float(c) for c in correct])
