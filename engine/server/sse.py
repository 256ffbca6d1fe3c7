"""Server-Sent Events plumbing shared by the streamed routes (/v1/completions, /v1/solve)."""
from __future__ import annotations

import asyncio
import json
from typing import AsyncIterator, Callable

from starlette.responses import StreamingResponse

__all__ = ["sse_event", "SSE_DONE", "SSEResponse", "cancel_and_wait"]

SSE_DONE = b"data: [DONE]\n\n"


def sse_event(obj) -> bytes:
    return b"data: " + json.dumps(obj, allow_nan=False, separators=(",", ":")).encode() + b"\n\n"


class SSEResponse(StreamingResponse):
    """A text/event-stream response that always closes its generator, so the generator's
    ``finally`` (which cancels the work behind the stream) runs when the client leaves, not
    whenever the garbage collector gets to it."""

    def __init__(self, events: AsyncIterator[bytes], on_close: Callable[[], None] | None = None):
        super().__init__(events, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            try:
                await self.body_iterator.aclose()
            finally:
                if self.on_close is not None:
                    self.on_close()


async def cancel_and_wait(*tasks: asyncio.Future) -> None:
    """Cancel what is still running and wait for it, so its cleanup (freeing KV) is done on return."""
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
