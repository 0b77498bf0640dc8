"""Where usage goes before an answer leaves: the `UsageSink` interface and its two sinks.

`MeteringUsageSink` calls MeteringService.RecordUsage (the local sidecar in a pod, or central
metering) through the generated stub and turns its failures into the embed service's errors:
unreachable or slow metering -> UNAVAILABLE, an event metering refuses -> FAILED_PRECONDITION.
`NullUsageSink` is for metering turned off (development, benchmarks).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from embed_service.errors import Unavailable, UsageRejected
from intent_embed.usage_events import first_problem
from intent_embed.v1 import metering_pb2, metering_pb2_grpc

log = logging.getLogger(__name__)

# Metering's answers for an event it will never accept (retrying the same event is futile).
_REFUSED = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


@dataclass(frozen=True)
class UsageRecord:
    request_id: str
    org_id: str
    project_id: str
    model: str
    tokens: int
    inputs: int
    at: datetime  # UTC


class UsageSink(Protocol):
    requires_org: bool

    async def record(self, usage: UsageRecord) -> None:
        """Returns once the usage is durably recorded; raises an EmbedError otherwise."""
        ...

    async def close(self) -> None: ...


class NullUsageSink:
    """Metering off: usage is only counted in the service's metrics."""

    requires_org = False

    async def record(self, usage: UsageRecord) -> None:
        return None

    async def close(self) -> None:
        return None


class MeteringUsageSink:
    """Records usage through RecordUsage, idempotent by request id, coalescing concurrent calls.

    A record is sent at once when no RecordUsage call is in flight (a lone request waits for
    nothing extra); records that arrive while one is in flight ride together in the next call.
    Under load this turns one metering round trip per request into one per flush, which is
    what keeps metering's CPU a small share of an embedding request's. Every caller still
    returns only after metering acknowledged its own event. A call that metering refuses as a
    whole (one malformed event or unknown org) is resent event by event, so only the requests
    whose events are refused fail.
    """

    requires_org = True

    def __init__(self, address: str, timeout_s: float, max_events_per_call: int = 500) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.max_events_per_call = max_events_per_call
        self._channel = grpc.aio.insecure_channel(
            address, options=[("grpc.enable_retries", 1), ("grpc.keepalive_time_ms", 60_000)]
        )
        self._stub = metering_pb2_grpc.MeteringServiceStub(self._channel)
        self._pending: list[_Pending] = []
        self._flusher: asyncio.Task[None] | None = None
        self.calls = 0  # RecordUsage calls made (tests and logs read it)

    async def record(self, usage: UsageRecord) -> None:
        at = Timestamp()
        at.FromDatetime(usage.at.astimezone(UTC))
        event = metering_pb2.UsageEvent(
            event_id=usage.request_id,
            org_id=usage.org_id,
            project_id=usage.project_id,
            model=usage.model,
            tokens=usage.tokens,
            inputs=usage.inputs,
            at=at,
        )
        # Checked here as metering checks it: a record it would refuse fails only its request
        # and never rides in (and spoils) a call with other requests' records.
        problem = first_problem([event])
        if problem is not None:
            raise UsageRejected(f"usage was refused: {problem.message}")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(event, usage, done))
        if self._flusher is None or self._flusher.done():
            # The flusher is not the caller's task: a caller that goes away (cancelled call)
            # does not take the other callers' records down with it.
            self._flusher = asyncio.create_task(self._flush())
        await done

    async def _flush(self) -> None:
        while self._pending:
            batch = self._pending[: self.max_events_per_call]
            del self._pending[: len(batch)]
            await self._send(batch)

    async def _send(self, batch: list[_Pending]) -> None:
        self.calls += 1
        try:
            await self._stub.RecordUsage(
                metering_pb2.RecordUsageRequest(events=[p.event for p in batch]),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            refused = code in _REFUSED
            if refused and len(batch) > 1:
                for pending in batch:  # find the refused events; the others are recorded
                    await self._send([pending])
                return
            for pending in batch:
                log.warning(
                    "usage_record_failed request_id=%s org=%s code=%s detail=%s",
                    pending.usage.request_id, pending.usage.org_id, code.name, err.details(),
                )  # fmt: skip
                pending.fail(
                    UsageRejected(f"usage was refused by metering: {err.details()}")
                    if refused
                    else Unavailable(
                        "usage metering is unreachable, so the request was not answered; "
                        "retry later"
                    )
                )
            return
        except Exception as exc:  # never leave a caller waiting forever
            for pending in batch:
                pending.fail(Unavailable(f"usage metering failed: {exc}"))
            return
        for pending in batch:
            if not pending.done.done():
                pending.done.set_result(None)

    async def close(self) -> None:
        if self._flusher is not None:
            await asyncio.wait([self._flusher], timeout=self.timeout_s)
        await self._channel.close()


@dataclass
class _Pending:
    event: metering_pb2.UsageEvent
    usage: UsageRecord
    done: asyncio.Future[None]

    def fail(self, error: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(error)


def now_utc() -> datetime:
    return datetime.now(UTC)
