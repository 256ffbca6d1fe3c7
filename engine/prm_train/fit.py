"""Stage 3 of `gboost train-prm`: fit a value head on step rows, held out by question.

Full-batch AdamW on binary cross-entropy (soft labels allowed), early stopping on the held-out
loss; the split is by question, since steps of one question (and of one solution) are not
independent. AUROC is the rank statistic (Mann-Whitney U, ties counted half).
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from gboost.prm.value_head import ValueHead


def auroc(scores, labels) -> float:
    """P(score of a random positive > score of a random negative), ties half; NaN without both classes."""
    s = torch.as_tensor(scores, dtype=torch.float64)
    y = torch.as_tensor(labels, dtype=torch.float64) >= 0.5
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = torch.argsort(s)
    ranks = torch.empty_like(s)
    ranks[order] = torch.arange(1, len(s) + 1, dtype=torch.float64)
    for v in torch.unique(s):  # average ranks over ties
        m = s == v
        if int(m.sum()) > 1:
            ranks[m] = ranks[m].mean()
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


@dataclass
class FitConfig:
    mlp_hidden: int = 0        # 0: logistic regression
    val_share: float = 0.2     # share of questions held out
    lr: float = 3e-3
    weight_decay: float = 1e-2
    max_epochs: int = 500
    patience: int = 25         # epochs without a better held-out loss before stopping
    seed: int = 0


@dataclass
class FitResult:
    head: ValueHead
    metrics: dict = field(default_factory=dict)


def split_groups(groups: list, val_share: float, seed: int) -> set:
    """The held-out groups: a seeded shuffle of the distinct groups, at least one on each side."""
    uniq = sorted(set(groups))
    if len(uniq) < 2:
        raise ValueError(f"need rows of at least 2 questions to hold some out, got {len(uniq)}")
    random.Random(seed).shuffle(uniq)
    n_val = min(len(uniq) - 1, max(1, round(len(uniq) * val_share)))
    return set(uniq[:n_val])


def fit_head(X: torch.Tensor, y: torch.Tensor, groups: list, cfg: FitConfig | None = None,
             solutions: list | None = None) -> FitResult:
    """X [N, H] raw feature rows, y [N] labels in [0, 1], groups[N] question of each row;
    `solutions[N]` the solution of each row, in step order (for path-level AUROCs: a held-out
    solution's score aggregated over its steps, against its last step's label)."""
    cfg = cfg or FitConfig()
    if X.shape[0] != len(y) or len(y) != len(groups):
        raise ValueError("X, y and groups must have one entry per row")
    torch.manual_seed(cfg.seed)
    val_groups = split_groups(list(groups), cfg.val_share, cfg.seed)
    is_val = torch.tensor([g in val_groups for g in groups])
    head = ValueHead(X.shape[1], cfg.mlp_hidden)
    Z = ValueHead.normalise(X)
    head.mean.copy_(Z[~is_val].mean(0))
    head.std.copy_(Z[~is_val].std(0).clamp_min(1e-4))
    y = y.float()
    Xt, yt, Xv, yv = X[~is_val], y[~is_val], X[is_val], y[is_val]
    opt = torch.optim.AdamW(head.net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    best, best_state, since = float("inf"), None, 0
    for epoch in range(cfg.max_epochs):
        head.train()
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(head(Xt), yt)
        loss.backward()
        opt.step()
        head.eval()
        with torch.no_grad():
            vl = float(F.binary_cross_entropy_with_logits(head(Xv), yv))
        if vl < best - 1e-6:
            best, since = vl, 0
            best_state = {k: v.clone() for k, v in head.state_dict().items()}
        else:
            since += 1
            if since >= cfg.patience:
                break
    head.load_state_dict(best_state)
    head.eval().requires_grad_(False)
    with torch.no_grad():
        pt, pv = head.score(Xt), head.score(Xv)
    m = {"rows_train": int((~is_val).sum()), "rows_val": int(is_val.sum()),
         "questions_train": len(set(groups)) - len(val_groups), "questions_val": len(val_groups),
         "positive_share": round(float((y >= 0.5).float().mean()), 4), "epochs": epoch + 1,
         "val_loss": round(best, 5), "auroc_train_steps": auroc(pt, yt), "auroc_val_steps": auroc(pv, yv)}
    if solutions is not None:
        paths: dict = {}
        for i in torch.nonzero(is_val)[:, 0].tolist():
            paths.setdefault(solutions[i], []).append((float(head.score(X[i])), float(y[i])))
        for name, agg in PATH_AGGREGATIONS.items():
            m[f"auroc_val_path_{name}"] = auroc([agg([s for s, _ in v]) for v in paths.values()],
                                                [v[-1][1] for v in paths.values()])
    # NaN (a held-out side with one class only) is not JSON: the card says null instead
    return FitResult(head, {k: None if isinstance(v, float) and v != v else v for k, v in m.items()})


PATH_AGGREGATIONS = {"last": lambda v: v[-1], "min": min, "mean": lambda v: sum(v) / len(v)}
