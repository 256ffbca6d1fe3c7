"""The request path: frames and files of the project's code from `gboost solve` (cli.py) to the
attention kernel, at the first attention call of a tiny `--method fusion` solve on random tiny
checkpoints. The logical path is stitched across asyncio tasks (each task remembers the stack that
created it), across the forward thread (run_in_executor hands its stack to the worker), and from
the first request waiting on an inline forward to the scheduler task that runs it.

    python scripts/request_path.py [REPO_ROOT]     # default: this checkout
"""
import asyncio
import json
import os
import sys
import tempfile
import threading
import traceback

root = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, root)
os.chdir(root)

HERE = os.path.abspath(__file__)


def own(frames):
    """The project's frames (not tests', not this script's wrappers)."""
    return [f for f in frames if f.filename.startswith(root + "/") and "/tests/" not in f.filename
            and "site-packages" not in f.filename and os.path.abspath(f.filename) != HERE]


def in_task(frames):
    """The frames above the event loop's callback runner (the task's own), or all when outside a loop."""
    cut = [i for i, f in enumerate(frames) if f.filename.endswith("asyncio/events.py") and f.name == "_run"]
    return frames[cut[-1] + 1:] if cut else frames


_orig_create_task = asyncio.BaseEventLoop.create_task


def create_task(self, coro, *a, **k):
    parent = asyncio.current_task(self) if self.is_running() else None
    origin = (getattr(parent, "_origin", []) if parent else []) + own(in_task(traceback.extract_stack()[:-1]))
    t = _orig_create_task(self, coro, *a, **k)
    t._origin = origin
    return t
asyncio.BaseEventLoop.create_task = create_task


_local = threading.local()


_orig_rie = asyncio.BaseEventLoop.run_in_executor


def run_in_executor(self, executor, func, *args):
    t = asyncio.current_task(self)
    origin = (getattr(t, "_origin", []) if t else []) + own(in_task(traceback.extract_stack()[:-1]))
    def wrapped(*a):
        _local.origin = origin
        return func(*a)
    return _orig_rie(self, executor, wrapped, *args)
asyncio.BaseEventLoop.run_in_executor = run_in_executor


import gboost.kernels.paged_attention as pa
from gboost import scheduler as sch


captured, waiting = [], []
_orig_forward = sch.Scheduler.forward


async def forward(self, seq, *a, **k):
    # an inline forward runs in the scheduler's own task: stitch the first request that waits on it
    if not waiting:
        t = asyncio.current_task()
        waiting.append((getattr(t, "_origin", []) if t else []) + own(in_task(traceback.extract_stack()[:-1])))
    return await _orig_forward(self, seq, *a, **k)
sch.Scheduler.forward = forward


_orig_attn = pa.paged_attention_torch


def attn(*a, **k):
    if not captured:
        origin = getattr(_local, "origin", None)
        here = own(traceback.extract_stack()[:-1]) if origin is not None else own(in_task(traceback.extract_stack()[:-1]))
        captured.append((origin if origin is not None else waiting[0] if waiting else []) + here)
    return _orig_attn(*a, **k)
pa.paged_attention_torch = attn


from gboost import testing
d = tempfile.mkdtemp()
slm = testing.write_tiny_checkpoint(os.path.join(d, "slm"), seed=1)
llm = testing.write_tiny_checkpoint(os.path.join(d, "llm"), seed=2)
cfgp = os.path.join(d, "c.json")
json.dump({"method": "fusion", "score_baselines": False, "max_step_tokens": 4, "max_depth": 2}, open(cfgp, "w"))
from gboost import cli
with open(os.devnull, "w") as null:
    so = sys.stdout; sys.stdout = null
    try:
        cli.main(["solve", "What is 2+3?", "--slm", str(slm), "--llm", str(llm), "--dtype", "float32",
                  "--config", cfgp, "--kv-memory-gb", "0.05", "--prm", "none"])
    finally:
        sys.stdout = so
path = captured[0]
start = next(i for i, f in enumerate(path) if f.filename.endswith("engine/cli.py") and f.name == "cmd_solve")
path = path[start:]
files = []
for f in path:
    rel = os.path.relpath(f.filename, root)
    if rel not in files:
        files.append(rel)
for f in path:
    print(f"{os.path.relpath(f.filename, root)}:{f.lineno} {f.name}")
print(f"frames {len(path)}  files {len(files)}: {' '.join(files)}")
