"""What ``gboost bench`` measures and prints: seconds in forward passes, and the table's rows."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass

import torch


class ForwardClock:
    """Seconds spent in model forward passes: the engine runners' ``compute`` (one batch, in the
    scheduler's worker thread) and transformers models' top-level ``forward`` (hooks)."""

    def __init__(self, device: str = "cpu"):
        self.seconds = 0.0
        # on a GPU a forward returns once its kernels are queued: wait for them, or the time
        # spent computing would be counted as time outside forward passes
        self.sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def wrap_runner(self, runner) -> None:
        inner = runner.compute

        def compute(*a, **kw):
            t = time.perf_counter()
            try:
                out = inner(*a, **kw)
                self.sync()
                return out
            finally:
                self.seconds += time.perf_counter() - t
        runner.compute = compute

    def hook(self, module: torch.nn.Module) -> None:
        starts: list[float] = []

        def done(m, a, o):
            self.sync()
            self.seconds += time.perf_counter() - starts.pop()
        module.register_forward_pre_hook(lambda m, a: starts.append(time.perf_counter()))
        module.register_forward_hook(done)


@dataclass
class Row:
    what: str
    engine: str
    other: str = "-"
    ratio: str = "-"
    same: str = "-"


def _x(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b > 0 else "-"


def _ms(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 10 else f"{s:.1f} s"


def _pct(x: float) -> str:
    return f"{100 * x:.0f}%"


def _key(res) -> tuple:
    """What must be equal: every chosen step (text, action) and the answer."""
    return tuple((s["text"], s["action"]) for s in res.steps), res.answer


def _computed(res) -> int:
    c = res.cost
    return c.slm_tokens + c.llm_tokens + c.prm_tokens + c.base_tokens


def print_table(rows: list[Row], out=None) -> None:
    out = out or sys.stdout
    head = Row("what", "engine", "naive / transformers", "ratio", "same answers")
    cols = [max(len(getattr(r, f)) for r in [head] + rows) for f in ("what", "engine", "other", "ratio", "same")]
    for i, r in enumerate([head] + rows):
        cells = [getattr(r, f).ljust(w) for f, w in zip(("what", "engine", "other", "ratio", "same"), cols)]
        print("| " + " | ".join(cells) + " |", file=out)
        if i == 0:
            print("|" + "|".join("-" * (w + 2) for w in cols) + "|", file=out)

