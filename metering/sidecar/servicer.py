"""The sidecar's MeteringService: RecordUsage into the durable spool, acknowledged only after
the commit; Authenticate and GetUsage belong to central metering and answer UNIMPLEMENTED."""

from __future__ import annotations

import logging
import sqlite3
from typing import NoReturn

import grpc

from intent_embed import tracing
from intent_embed.grpc_server import abort
from intent_embed.usage_events import first_problem
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.sidecar.forwarder import Forwarder
from metering.sidecar.metrics import SidecarMetrics
from metering.sidecar.spool import SpoolFullError, spool_key
from metering.sidecar.writer import SpoolWriter

log = logging.getLogger("metering.sidecar")

_CENTRAL_ONLY = "the metering sidecar only records usage; call the central metering service"


class SidecarServicer(metering_pb2_grpc.MeteringServiceServicer):
    """RecordUsage into the spool; the other methods belong to the central service."""

    def __init__(self, writer: SpoolWriter, forwarder: Forwarder, metrics: SidecarMetrics) -> None:
        self._writer = writer
        self._forwarder = forwarder
        self._metrics = metrics
        self.accepting = True

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.RecordUsageResponse:
        if not self.accepting:
            await self._abort(
                context, grpc.StatusCode.UNAVAILABLE, "metering sidecar is shutting down"
            )
        # The same check central applies: an acknowledged event must be one it can bill.
        problem = first_problem(request.events)
        if problem is not None:
            await self._abort(
                context, grpc.StatusCode.INVALID_ARGUMENT, problem.message, field=problem.field
            )
        entries = [(spool_key(e.org_id, e.event_id), e.SerializeToString()) for e in request.events]
        try:
            with tracing.span("spool.write", **{"usage.events": len(entries)}):
                result = await self._writer.append(entries)
        except SpoolFullError as err:
            log.warning("spool full events=%d detail=%s", len(entries), err)
            await self._abort(
                context,
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"usage spool full ({err}); central metering is behind, retry later",
            )
        except sqlite3.Error as err:
            # Disk full or I/O error: nothing durable, so no ack; embed refuses the work.
            await self._abort(
                context, grpc.StatusCode.UNAVAILABLE, f"usage spool cannot be written: {err}"
            )
        self._forwarder.wake()
        self._metrics.recorded_events.inc(result.recorded)
        self._metrics.duplicate_events.inc(result.duplicates)
        return metering_pb2.RecordUsageResponse(
            recorded=result.recorded, duplicates=result.duplicates
        )

    async def Authenticate(
        self, request: metering_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.AuthenticateResponse:
        await self._abort(context, grpc.StatusCode.UNIMPLEMENTED, _CENTRAL_ONLY)

    async def GetUsage(
        self, request: metering_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetUsageResponse:
        await self._abort(context, grpc.StatusCode.UNIMPLEMENTED, _CENTRAL_ONLY)

    async def _abort(
        self,
        context: grpc.aio.ServicerContext,
        code: grpc.StatusCode,
        message: str,
        field: str = "",
    ) -> NoReturn:
        await abort(context, code, message, field=field)
