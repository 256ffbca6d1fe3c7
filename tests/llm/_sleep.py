import asyncio


class SleepRecorder:
    """Stands in for asyncio.sleep in back-off: records, never waits."""

    def __init__(self):
        self.delays = []

    async def __call__(self, s):
        self.delays.append(s)
        await asyncio.sleep(0)
