import asyncio

import pytest

from gboost.evals.slots import PrioritySlots


def test_freed_slots_go_to_the_lowest_priority_number_first_fifo_within_one():
    async def main():
        pool, order = PrioritySlots(2), []

        async def job(name, prio, hold):
            async with pool.take(prio):
                order.append(name)
                await asyncio.sleep(hold)

        tasks = [asyncio.create_task(job("a", 0, 0.05)), asyncio.create_task(job("b", 0, 0.05))]
        await asyncio.sleep(0.01)  # both slots held: everyone below waits
        tasks += [asyncio.create_task(job("low1", 1, 0.01)), asyncio.create_task(job("low2", 1, 0.01))]
        await asyncio.sleep(0.01)
        tasks += [asyncio.create_task(job("hi1", 0, 0.01)), asyncio.create_task(job("hi2", 0, 0.01))]
        await asyncio.gather(*tasks)
        return order, pool.free

    order, free = asyncio.run(main())
    assert order == ["a", "b", "hi1", "hi2", "low1", "low2"]
    assert free == 2


def test_a_cancelled_waiter_loses_no_slot():
    async def main():
        pool, got = PrioritySlots(1), []

        async def job(name, hold):
            async with pool.take(0):
                got.append(name)
                await asyncio.sleep(hold)

        first = asyncio.create_task(job("first", 0.03))
        await asyncio.sleep(0.005)
        doomed = asyncio.create_task(job("doomed", 0.01))
        after = asyncio.create_task(job("after", 0.01))
        await asyncio.sleep(0.005)
        doomed.cancel()
        await asyncio.gather(first, after)
        with pytest.raises(asyncio.CancelledError):
            await doomed
        # a slot handed over just as its waiter is cancelled is passed on, not kept
        release = asyncio.Event()

        async def holder():
            async with pool.take(0):
                await release.wait()

        h = asyncio.create_task(holder())
        await asyncio.sleep(0.005)
        late = asyncio.create_task(job("late", 0.0))
        await asyncio.sleep(0.005)
        release.set()
        await asyncio.sleep(0)  # holder runs and hands its slot to `late`, which has not run yet
        assert pool._waiters == [] and not late.done()
        late.cancel()
        await asyncio.gather(h, late, return_exceptions=True)
        assert late.cancelled()
        async def last():
            async with pool.take(0):
                got.append("last")

        await asyncio.wait_for(last(), 1.0)  # a leaked slot would block here forever
        return got, pool.free

    got, free = asyncio.run(main())
    assert got == ["first", "after", "last"]
    assert free == 1


def test_pool_size_must_be_positive():
    with pytest.raises(ValueError, match="n >= 1"):
        PrioritySlots(0)
