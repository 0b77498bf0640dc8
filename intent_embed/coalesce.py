"""Coalescing: concurrent calls that arrive while one group is being handled share the next group.

One group is in flight at a time. A call that finds nothing in flight starts a group at once (a
lone call waits for nothing extra); calls that arrive meanwhile queue up and go together in the
following group, up to a limit. Every caller gets its own result or exception back. Used where
one round trip (a database commit, an fsync, an RPC) costs about the same for one item as for
many: metering's group commit, the sidecar's spool writes and the embed service's usage records.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

ItemT = TypeVar("ItemT")
ResultT = TypeVar("ResultT")

# What a group handler returns: one result or exception per item, in the items' order.
GroupHandler = Callable[[list[ItemT]], Awaitable[Sequence[ResultT | BaseException]]]


class CoalescerClosed(RuntimeError):
    """`submit` after `close`: the owner is shutting down."""


class Coalescer(Generic[ItemT, ResultT]):
    """Hands queued items to `handle` in groups; each `submit` resolves with its own result.

    A group takes the oldest queued item and then more while their `weight` summed stays under
    `limit` (so it may end one item over it). `handle` runs on a task of its own, so a caller
    that is cancelled does not take the others' items down with it; its item is handled anyway.
    An exception `handle` raises fails every item of that group.
    """

    def __init__(
        self,
        handle: GroupHandler[ItemT, ResultT],
        *,
        limit: int,
        weight: Callable[[ItemT], int] = lambda _: 1,
        name: str = "coalescer",
    ) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._handle = handle
        self._limit = limit
        self._weight = weight
        self._name = name
        self._queue: list[tuple[ItemT, asyncio.Future[ResultT]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    @property
    def queued(self) -> int:
        """Items waiting for a group (not counting the group in flight)."""
        return len(self._queue)

    async def submit(self, item: ItemT) -> ResultT:
        """The result `handle` gave for `item`; raises the exception it gave instead."""
        if self._closed:
            raise CoalescerClosed(f"{self._name} is closed")
        future: asyncio.Future[ResultT] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=self._name)
        return await future

    async def close(self, within_s: float | None = None) -> None:
        """Refuses new items and waits (up to `within_s`) until the queued ones are handled."""
        self._closed = True
        if self._task is not None and not self._task.done():
            await asyncio.wait([self._task], timeout=within_s)

    def _next_group(self) -> list[tuple[ItemT, asyncio.Future[ResultT]]]:
        taken, total = 0, 0
        for item, _ in self._queue:
            if taken and total >= self._limit:
                break
            total += self._weight(item)
            taken += 1
        group = self._queue[:taken]
        del self._queue[:taken]
        return group

    async def _drain(self) -> None:
        while self._queue:
            group = self._next_group()
            results: Sequence[ResultT | BaseException]
            try:
                results = await self._handle([item for item, _ in group])
            except Exception as exc:  # every caller of the group gets the failure
                log.warning("group_failed name=%s items=%d error=%r", self._name, len(group), exc)
                results = [exc] * len(group)
            for (_, future), result in zip(group, results, strict=True):
                if future.done():  # the caller went away
                    continue
                if isinstance(result, BaseException):
                    future.set_exception(result)
                else:
                    future.set_result(result)
