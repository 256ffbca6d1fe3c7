"""One pool of in-flight slots shared by several eval runs in one process, by priority."""
from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools


class PrioritySlots:
    """``n`` in-flight slots shared by every method; a freed slot goes to the waiter with the
    lowest priority number (FIFO within one), so a low-priority method soaks up the slots the
    others no longer need instead of slowing them."""

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"PrioritySlots needs n >= 1, got {n}")
        self.free = n
        self._waiters: list = []
        self._seq = itertools.count()

    @contextlib.asynccontextmanager
    async def take(self, priority: int):
        if self.free > 0 and not self._waiters:
            self.free -= 1
        else:
            fut = asyncio.get_running_loop().create_future()
            heapq.heappush(self._waiters, (priority, next(self._seq), fut))
            try:
                await fut
            except asyncio.CancelledError:
                if fut.done() and not fut.cancelled():   # handed a slot, then cancelled: pass it on
                    self._release()
                raise
        try:
            yield
        finally:
            self._release()

    def _release(self) -> None:
        while self._waiters:
            fut = heapq.heappop(self._waiters)[2]
            if not fut.done():          # a cancelled waiter is skipped here, not searched for
                fut.set_result(None)
                return
        self.free += 1
