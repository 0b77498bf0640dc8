"""The forwarder: moves spooled usage events to central metering; the only code that removes
them from the spool.

Events go in batches to the central ``RecordUsage`` and leave the spool only after the central
ack (event ids make a repeated delivery a duplicate there, never double usage). Transient
failures are retried with capped, jittered exponential backoff, cut short when the channel to
central becomes ready again; a batch central rejects as invalid is split until the offending
events stand alone, and those move to the dead-letter table.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from dataclasses import dataclass

import grpc

from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.sidecar.metrics import SidecarMetrics
from metering.sidecar.settings import SidecarSettings
from metering.sidecar.spool import Spool, SpooledEvent

log = logging.getLogger("metering.sidecar")

# Central answers that mean "this batch can never succeed as sent": retrying is pointless.
REJECTED_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass
class _Backoff:
    initial_s: float
    max_s: float
    current_s: float = 0.0

    def next(self) -> float:
        self.current_s = (
            self.initial_s if self.current_s == 0 else min(self.current_s * 2, self.max_s)
        )
        # Full jitter: many sidecars coming back at once must not hammer central in step.
        return random.uniform(self.current_s / 2, self.current_s)

    def reset(self) -> None:
        self.current_s = 0.0


class Forwarder:
    """Moves spooled events to the central ledger; the only code that removes them."""

    def __init__(
        self,
        spool: Spool,
        central: metering_pb2_grpc.MeteringServiceStub,
        settings: SidecarSettings,
        metrics: SidecarMetrics,
    ) -> None:
        self._spool = spool
        self._central = central
        self._settings = settings
        self._metrics = metrics
        # New events end an idle wait; only shutdown or central coming back ends a backoff
        # wait, so a stream of appends during an outage does not turn into a retry storm.
        self._new_data = asyncio.Event()
        self._interrupt = asyncio.Event()
        self._deadline: float | None = None
        # The first retry comes after one idle interval; later ones back off to the cap.
        self._backoff = _Backoff(
            initial_s=min(settings.forward_interval_s, settings.forward_backoff_max_s),
            max_s=settings.forward_backoff_max_s,
        )

    def wake(self) -> None:
        """New events were spooled."""
        self._new_data.set()

    def central_ready(self) -> None:
        """The channel to central (re)connected: retry now instead of after the backoff."""
        self._interrupt.set()

    async def run(self) -> None:
        """Forward until drained after :meth:`drain_by` was called (or forever)."""
        while True:
            if self._deadline is not None and time.monotonic() >= self._deadline:
                return
            # Cleared before looking, so an append right after an empty peek still wakes us.
            self._new_data.clear()
            batch = await asyncio.to_thread(self._spool.peek, self._settings.forward_batch)
            if not batch:
                if self._deadline is not None:
                    return
                await self._wait(self._settings.forward_interval_s, self._new_data)
                continue
            if await self._forward(batch):
                self._backoff.reset()
            else:
                await self._wait(self._backoff.next())

    def drain_by(self, deadline: float) -> None:
        """Stop waiting for new events; keep forwarding until empty or ``deadline`` (monotonic)."""
        self._deadline = deadline
        self._backoff.reset()
        self._interrupt.set()

    async def _wait(self, seconds: float, *also: asyncio.Event) -> None:
        """Sleep up to ``seconds`` (never past the drain deadline) or until interrupted."""
        if self._deadline is not None:
            seconds = min(seconds, max(0.0, self._deadline - time.monotonic()))
        waiters = [asyncio.create_task(e.wait()) for e in (self._interrupt, *also)]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
        self._interrupt.clear()

    def _timeout(self) -> float:
        timeout = self._settings.forward_timeout_s
        if self._deadline is not None:
            timeout = min(timeout, max(0.05, self._deadline - time.monotonic()))
        return timeout

    async def _forward(self, batch: list[SpooledEvent]) -> bool:
        """Send one batch; True when every event of it left the spool (acked or dead)."""
        request = metering_pb2.RecordUsageRequest(
            events=[metering_pb2.UsageEvent.FromString(e.payload) for e in batch]
        )
        try:
            response = await self._central.RecordUsage(request, timeout=self._timeout())
        except grpc.aio.AioRpcError as err:
            code = err.code()
            self._metrics.forward_errors.labels(code=code.name).inc()
            if code in REJECTED_CODES:
                return await self._isolate_rejected(batch, code, err.details() or "")
            log.warning(
                "forward failed code=%s events=%d spool_depth=%d detail=%s",
                code.name, len(batch), self._spool.depth, err.details(),
            )
            return False
        await asyncio.to_thread(self._spool.ack, [e.event_id for e in batch])
        self._metrics.forwarded_events.inc(len(batch))
        log.debug(
            "forwarded events=%d recorded=%d duplicates=%d",
            len(batch), response.recorded, response.duplicates,
        )
        return True

    async def _isolate_rejected(
        self, batch: list[SpooledEvent], code: grpc.StatusCode, detail: str
    ) -> bool:
        # Central writes nothing of a rejected call, so halve it until the culprits stand
        # alone: the good events still arrive, only the bad ones are parked.
        if len(batch) == 1:
            event = batch[0]
            await asyncio.to_thread(self._spool.dead_letter, event, code.name, detail)
            self._metrics.dead_letters.inc()
            log.error(
                "event dead-lettered event_id=%s code=%s detail=%s",
                event.event_id, code.name, detail,
            )
            return True
        middle = len(batch) // 2
        return await self._forward(batch[:middle]) and await self._forward(batch[middle:])


async def watch_central(channel: grpc.aio.Channel, forwarder: Forwarder) -> None:
    """Tell the forwarder whenever the channel to central becomes READY (a recovery)."""
    state = channel.get_state(try_to_connect=True)
    while True:
        await channel.wait_for_state_change(state)
        state = channel.get_state(try_to_connect=True)
        if state == grpc.ChannelConnectivity.READY:
            forwarder.central_ready()


