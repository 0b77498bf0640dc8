"""Group commit for RecordUsage: one writer task commits many concurrent calls together.

Each call puts its events on a queue with a future and waits. The writer takes everything
queued (up to a cap), writes it in ONE database transaction in a worker thread and then
resolves every future with that call's own result. So a flush to disk is paid once per group,
not once per call, and no call is acknowledged before its events are committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError

from metering.ledger import Event, LedgerError, Recorded

log = logging.getLogger("metering.group_commit")

# The database may refuse a group for a passing reason (deadlock between replicas, SQLite
# busy past its timeout); such a group is retried whole, since nothing of it was committed.
RETRIES = 3


@dataclass
class _Pending:
    events: Sequence[Event]
    future: asyncio.Future[Recorded | LedgerError]


GroupObserver = Callable[[int, int, float], None]


class GroupCommitter:
    """Queues RecordUsage calls and commits them in groups from one writer task."""

    def __init__(
        self,
        write: Callable[[Sequence[Sequence[Event]]], list[Recorded | LedgerError]],
        *,
        max_events: int = 5000,
        observe: GroupObserver | None = None,
    ) -> None:
        self._write = write
        self._max_events = max_events
        self._observe = observe
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="group-commit")

    async def stop(self) -> None:
        """Stops after committing what is queued (callers waiting still get answers)."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        try:
            await self._task
        except asyncio.CancelledError:
            pass
        self._task = None

    async def record(self, events: Sequence[Event]) -> Recorded:
        """Resolves once `events` are committed; raises the call's LedgerError if refused."""
        if self._task is None:
            raise RuntimeError("group committer is not running")
        future: asyncio.Future[Recorded | LedgerError] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(events, future))
        result = await future
        if isinstance(result, LedgerError):
            raise result
        return result

    async def _run(self) -> None:
        while True:
            first = await self._queue.get()
            group = [first]
            size = len(first.events)
            while size < self._max_events and not self._queue.empty():
                item = self._queue.get_nowait()
                group.append(item)
                size += len(item.events)
            try:
                await self._commit(group, size)
            finally:
                for _ in group:
                    self._queue.task_done()

    async def _commit(self, group: list[_Pending], size: int) -> None:
        started = time.monotonic()
        error: BaseException | None = None
        for attempt in range(RETRIES):
            try:
                results = await asyncio.to_thread(self._write, [p.events for p in group])
            except DBAPIError as exc:
                error = exc
                log.warning(
                    "event=group_commit_retry calls=%d events=%d attempt=%d error=%s",
                    len(group), size, attempt + 1, type(exc.orig).__name__,
                )
                await asyncio.sleep(0.05 * (attempt + 1))
                continue
            except Exception as exc:
                error = exc
                break
            for pending, result in zip(group, results, strict=True):
                if not pending.future.done():
                    pending.future.set_result(result)
            if self._observe is not None:
                self._observe(len(group), size, time.monotonic() - started)
            return
        log.error(
            "event=group_commit_failed calls=%d events=%d error=%r", len(group), size, error
        )
        for pending in group:
            if not pending.future.done():
                pending.future.set_exception(
                    error if error is not None else RuntimeError("commit failed")
                )
