"""The coalescer every batching path uses: a lone call goes at once, calls that arrive while a
group is in flight share the next one within the limit, and each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from intent_embed.coalesce import Coalescer, CoalescerClosed


class Recorder:
    """A group handler that records each group and can hold it until released."""

    def __init__(self) -> None:
        self.groups: list[list[int]] = []
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.groups.append(items)
        self.started.set()
        await self.release.wait()
        return [ValueError(f"odd {i}") if i % 2 else i * 10 for i in items]


async def test_a_lone_call_goes_at_once_and_later_calls_share_the_next_group() -> None:
    handler = Recorder()
    coalescer: Coalescer[int, int] = Coalescer(handler, limit=100)
    assert await coalescer.submit(2) == 20
    handler.release.clear()
    handler.started.clear()
    first = asyncio.ensure_future(coalescer.submit(4))
    await handler.started.wait()  # 4 is in flight alone
    rest = [asyncio.ensure_future(coalescer.submit(n)) for n in (6, 8, 10)]
    await asyncio.sleep(0)
    assert coalescer.queued == 3
    handler.release.set()
    assert await asyncio.gather(first, *rest) == [40, 60, 80, 100]
    assert handler.groups == [[2], [4], [6, 8, 10]]


async def test_each_caller_gets_its_own_exception_and_a_failed_group_fails_all_of_it() -> None:
    coalescer: Coalescer[int, int] = Coalescer(Recorder(), limit=100)
    results = await asyncio.gather(*(coalescer.submit(n) for n in (1, 2, 3)),
                                   return_exceptions=True)  # fmt: skip
    assert [type(r) for r in results] == [ValueError, int, ValueError]
    assert str(results[2]) == "odd 3"

    async def broken(items: list[int]) -> list[int]:
        raise OSError("disk full")

    failing: Coalescer[int, int] = Coalescer(broken, limit=100)
    outcomes = await asyncio.gather(failing.submit(1), failing.submit(2), return_exceptions=True)
    assert all(isinstance(o, OSError) for o in outcomes)


async def test_groups_stop_at_the_limit_counted_in_weight() -> None:
    handler = Recorder()
    handler.release.clear()
    coalescer: Coalescer[int, int] = Coalescer(handler, limit=10, weight=lambda n: n)
    calls = [asyncio.ensure_future(coalescer.submit(2))]
    await handler.started.wait()  # 2 is in flight alone
    calls += [asyncio.ensure_future(coalescer.submit(n)) for n in (4, 4, 4, 6, 2)]
    await asyncio.sleep(0)
    handler.release.set()
    await asyncio.gather(*calls)
    # The first item went alone; then 4+4+4 reaches the limit, and 6+2 follow.
    assert handler.groups == [[2], [4, 4, 4], [6, 2]]


async def test_a_cancelled_caller_leaves_the_others_and_its_item_is_still_handled() -> None:
    handler = Recorder()
    handler.release.clear()
    coalescer: Coalescer[int, int] = Coalescer(handler, limit=100)
    gone = asyncio.ensure_future(coalescer.submit(2))
    stays = asyncio.ensure_future(coalescer.submit(4))
    await handler.started.wait()
    gone.cancel()
    handler.release.set()
    assert await stays == 40
    assert handler.groups == [[2, 4]]


async def test_close_waits_for_queued_items_then_refuses_new_ones() -> None:
    handler = Recorder()
    handler.release.clear()
    coalescer: Coalescer[int, int] = Coalescer(handler, limit=1)
    calls = [asyncio.ensure_future(coalescer.submit(n)) for n in (2, 4, 6)]
    await handler.started.wait()
    closing = asyncio.ensure_future(coalescer.close())
    await asyncio.sleep(0)
    assert not closing.done()
    handler.release.set()
    await closing
    assert [c.result() for c in calls] == [20, 40, 60]
    with pytest.raises(CoalescerClosed):
        await coalescer.submit(8)
