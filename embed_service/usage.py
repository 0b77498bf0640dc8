"""Where usage goes before an answer leaves: the `UsageSink` interface and its two sinks.

`MeteringUsageSink` calls MeteringService.RecordUsage (the local sidecar in a pod, or central
metering) through the generated stub and turns its failures into the embed service's errors:
unreachable or slow metering -> UNAVAILABLE, an event metering refuses -> FAILED_PRECONDITION.
`NullUsageSink` is for metering turned off (development, benchmarks).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from embed_service.errors import EmbedError, Unavailable, UsageRejected
from embed_service.metrics import EmbedMetrics
from intent_embed import tracing
from intent_embed.coalesce import Coalescer
from intent_embed.rich_status import details_of
from intent_embed.service_auth import client_interceptors
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
    nothing extra); records that arrive while one is in flight ride together in the next call
    (:mod:`intent_embed.coalesce`), which keeps metering's CPU a small share of an embedding
    request's under load. Every caller still returns only after metering acknowledged its own
    event. A call that metering refuses as a whole (one malformed event or unknown org) is
    resent event by event, so only the requests whose events are refused fail.
    """

    requires_org = True

    def __init__(
        self,
        address: str,
        timeout_s: float,
        max_events_per_call: int = 500,
        metrics: EmbedMetrics | None = None,
        token: str = "",
    ) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self.metrics = metrics or EmbedMetrics()
        self._channel = grpc.aio.insecure_channel(
            address,
            options=[("grpc.enable_retries", 1), ("grpc.keepalive_time_ms", 60_000)],
            interceptors=[*tracing.client_interceptors(), *client_interceptors(token)],
        )
        self._stub = metering_pb2_grpc.MeteringServiceStub(self._channel)
        self._coalescer: Coalescer[_Pending, None] = Coalescer(
            self._send, limit=max_events_per_call, name="usage-records"
        )
        self.metrics.usage_records_queued.set_function(lambda: self._coalescer.queued)

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
            raise UsageRejected(f"usage was refused: {problem.message}", field=problem.field)
        await self._coalescer.submit(_Pending(event, usage))

    async def _send(self, batch: list[_Pending]) -> list[EmbedError | None]:
        """One RecordUsage call for `batch`; what each record's caller gets."""
        self.metrics.usage_calls.inc()
        try:
            await self._stub.RecordUsage(
                metering_pb2.RecordUsageRequest(events=[p.event for p in batch]),
                timeout=self.timeout_s,
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            refused = code in _REFUSED
            if refused and len(batch) > 1:
                # Find the refused events; the others are recorded.
                return [(await self._send([pending]))[0] for pending in batch]
            for pending in batch:
                log.warning(
                    "usage_record_failed request_id=%s org=%s code=%s detail=%s",
                    pending.usage.request_id, pending.usage.org_id, code.name, err.details(),
                )  # fmt: skip
            error: EmbedError = (
                UsageRejected(
                    f"usage was refused by metering: {err.details()}",
                    reason=details_of(err).reason,
                )
                if refused
                else Unavailable(
                    "usage metering is unreachable, so the request was not answered; retry later"
                )
            )
            return [error] * len(batch)
        except Exception as exc:  # never leave a caller waiting forever
            return [Unavailable(f"usage metering failed: {exc}")] * len(batch)
        return [None] * len(batch)

    async def close(self) -> None:
        await self._coalescer.close(within_s=self.timeout_s)
        await self._channel.close()


@dataclass
class _Pending:
    event: metering_pb2.UsageEvent
    usage: UsageRecord


def now_utc() -> datetime:
    return datetime.now(UTC)
