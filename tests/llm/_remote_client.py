"""What the RemoteLLM tests share: a bounded runner and a client with test defaults (top-k K,
short timeout, a recorded back-off sleep, a seeded jitter)."""
import asyncio
import random

from _sleep import SleepRecorder
from gboost.llm.remote import RemoteLLM

K = 5


def run(coro, timeout=20):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def client(url, **kw):
    kw.setdefault("top_logprobs", K)
    kw.setdefault("timeout_s", 5)
    kw.setdefault("sleep", SleepRecorder())
    kw.setdefault("rng", random.Random(0))
    return RemoteLLM(url, **kw)
