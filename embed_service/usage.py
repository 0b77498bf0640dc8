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

from embed_service.errors import Unavailable, UsageRejected
from intent_embed.v1 import metering_pb2, metering_pb2_grpc

log = logging.getLogger(__name__)


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
    """Records each request's usage with one RecordUsage call, idempotent by request id."""

    requires_org = True

    def __init__(self, address: str, timeout_s: float) -> None:
        self.address = address
        self.timeout_s = timeout_s
        self._channel = grpc.aio.insecure_channel(
            address, options=[("grpc.enable_retries", 1), ("grpc.keepalive_time_ms", 60_000)]
        )
        self._stub = metering_pb2_grpc.MeteringServiceStub(self._channel)

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
        try:
            await self._stub.RecordUsage(
                metering_pb2.RecordUsageRequest(events=[event]), timeout=self.timeout_s
            )
        except grpc.aio.AioRpcError as err:
            code = err.code()
            log.warning(
                "usage_record_failed request_id=%s org=%s code=%s detail=%s",
                usage.request_id, usage.org_id, code.name, err.details(),
            )
            if code in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION):
                raise UsageRejected(f"usage was refused by metering: {err.details()}") from err
            raise Unavailable(
                "usage metering is unreachable, so the request was not answered; retry later"
            ) from err

    async def close(self) -> None:
        await self._channel.close()


def now_utc() -> datetime:
    return datetime.now(UTC)
