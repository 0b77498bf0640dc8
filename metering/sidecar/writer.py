"""Group commit into the spool: RecordUsage calls that arrive while a commit runs share the next.

One fsync per group instead of one per call, so under load the spool's throughput follows the
callers' concurrency instead of the disk's sync latency (:mod:`intent_embed.coalesce`).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from intent_embed.coalesce import Coalescer
from metering.sidecar.spool import AppendResult, Spool, SpoolFullError

log = logging.getLogger("metering.sidecar")

Entries = Sequence[tuple[str, bytes]]


class SpoolWriter:
    """Appends the events of concurrent calls to the spool, one transaction per group."""

    MAX_CALLS_PER_COMMIT = 512

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._coalescer: Coalescer[Entries, AppendResult] = Coalescer(
            self._commit, limit=self.MAX_CALLS_PER_COMMIT, name="spool-writer"
        )

    async def append(self, entries: Entries) -> AppendResult:
        """Durably spooled when this returns; raises SpoolFullError when it does not fit."""
        return await self._coalescer.submit(entries)

    async def close(self) -> None:
        """Commits what is queued, then refuses new appends."""
        await self._coalescer.close()

    async def _commit(self, group: list[Entries]) -> list[AppendResult | SpoolFullError]:
        try:
            return await asyncio.to_thread(self._spool.append_many, group)
        except Exception:  # a disk error: every caller of the group fails
            log.exception("spool commit failed calls=%d", len(group))
            raise
