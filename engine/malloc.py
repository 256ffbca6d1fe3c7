"""glibc malloc settings for a CPU inference process.

A forward allocates many short-lived tensors of 0.1-30 MB (attention's gathered keys, logits rows,
MLP activations). glibc serves those with fresh mmaps, or trims the heap top after each free, so
every forward faults its temporaries in again, page by page: a default `gboost solve` on the demo
pair spent a third of its wall time in the kernel doing so (benchmarks/RESULTS.md). Keeping up to
32 MB blocks on the heap and the heap untrimmed trades some resident memory for that time.
This is the one policy: every command and every CPU engine applies it (idempotent); servers hand
the heap's free memory back now and then (`release_free_memory`).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
ENV = "GBOOST_MALLOC_TUNE"  # 0: leave malloc as it is
GLIBC_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")  # the user's own win
_done: bool | None = None


def tune_malloc() -> bool:
    """Apply the settings once per process; True if they are in force (glibc only)."""
    global _done
    if _done is not None:
        return _done
    _done = False
    if os.environ.get(ENV, "1") == "0" or os.name != "posix" or any(k in os.environ for k in GLIBC_ENV):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl, macOS: no mallopt
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    _done = bool(mallopt(_M_MMAP_THRESHOLD, 32 << 20) and mallopt(_M_TRIM_THRESHOLD, 1 << 30)
                 and mallopt(_M_TOP_PAD, 64 << 20))
    return _done


def release_free_memory() -> bool:
    """Hand the C heap's free memory back to the OS (glibc ``malloc_trim``): a server's small
    allocations (request bodies, JSON, tensors under the threshold) leave free memory in the heap
    that RSS keeps counting. Returns whether it ran (glibc only)."""
    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
        return True
    except (OSError, AttributeError):  # musl, macOS: no malloc_trim
        return False
