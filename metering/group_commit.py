"""Group commit for RecordUsage: concurrent calls are written in ONE database transaction.

Calls that arrive while a group commits share the next one (:mod:`intent_embed.coalesce`), so a
flush to disk is paid once per group, not once per call, and no call is acknowledged before its
events are committed. The transaction runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence

from sqlalchemy.exc import DBAPIError

from intent_embed.coalesce import Coalescer
from metering.errors import LedgerError
from metering.usage import Event, Recorded

log = logging.getLogger("metering.group_commit")

# The database may refuse a group for a passing reason (deadlock between replicas, SQLite
# busy past its timeout); such a group is retried whole, since nothing of it was committed.
RETRIES = 3

GroupObserver = Callable[[int, int, float], None]
GroupWriter = Callable[[Sequence[Sequence[Event]]], list[Recorded | LedgerError]]


class GroupCommitter:
    """Commits RecordUsage calls in groups, at most `max_events` events a transaction."""

    def __init__(
        self, write: GroupWriter, *, max_events: int = 5000, observe: GroupObserver | None = None
    ) -> None:
        self._write = write
        self._observe = observe
        self._coalescer: Coalescer[Sequence[Event], Recorded] = Coalescer(
            self._commit, limit=max_events, weight=len, name="group-commit"
        )

    async def record(self, events: Sequence[Event]) -> Recorded:
        """Resolves once `events` are committed; raises the call's LedgerError if refused."""
        return await self._coalescer.submit(events)

    async def stop(self) -> None:
        """Commits what is queued (callers waiting still get answers), then refuses calls."""
        await self._coalescer.close()

    async def _commit(self, group: list[Sequence[Event]]) -> list[Recorded | LedgerError]:
        started = time.monotonic()
        size = sum(len(events) for events in group)
        for attempt in range(1, RETRIES + 1):
            try:
                results = await asyncio.to_thread(self._write, group)
            except DBAPIError as exc:
                log.warning(
                    "event=group_commit_retry calls=%d events=%d attempt=%d error=%s",
                    len(group), size, attempt, type(exc.orig).__name__,
                )  # fmt: skip
                if attempt == RETRIES:
                    raise
                await asyncio.sleep(0.05 * attempt)
                continue
            if self._observe is not None:
                self._observe(len(group), size, time.monotonic() - started)
            return results
        raise AssertionError("unreachable")
