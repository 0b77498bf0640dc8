"""Wiring of the central metering service: the MeteringService gRPC servicer (RecordUsage with
group commit, Authenticate, GetUsage, and self-service billing's CreateBillingSetup and
ApplyStripeEvent), its Prometheus metrics, the in-process billing loop and the SIGTERM drain,
on the shared server scaffold (:mod:`intent_embed.grpc_server`). Calls that wait on Stripe run
on pools of their own (:mod:`metering.stripe_pool`), never on the threads of the ledger's calls.

``start_server`` takes its dependencies (ledger, settings, metrics) as arguments so tests start
it in-process on ``127.0.0.1:0`` and talk to it through a real channel.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import NoReturn, TypeVar

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from intent_embed import tracing
from intent_embed.grpc_server import QUIET_S, GrpcServer, abort, until_signalled
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering import service_identity
from metering.billing_setup import SelfService, self_service_from
from metering.errors import (
    BadSignature,
    InvalidUsage,
    LedgerError,
    NotFound,
    StripeBusy,
    StripeNotConfigured,
    StripeUnavailable,
    Unauthenticated,
    UnknownOrg,
)
from metering.group_commit import GroupCommitter
from metering.ledger import Ledger
from metering.models import utcnow
from metering.reports import Bucket, ProjectUsage, UsageReport, parse_range
from metering.service_identity import CENTRAL_METHODS, EMBED, GATEWAY, SIDECAR
from metering.settings import Settings
from metering.stripe_pool import StripePool
from metering.usage import Event, validate_events

log = logging.getLogger("metering.server")

ResultT = TypeVar("ResultT")

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name


class Metrics:
    """The central service's Prometheus metrics, on their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.events = Counter(
            "metering_events_total", "usage events received", ["result"], registry=self.registry
        )
        self.tokens = Counter(
            "metering_tokens_recorded_total", "tokens newly recorded", registry=self.registry
        )
        self.group_calls = Histogram(
            "metering_group_commit_calls",
            "RecordUsage calls per group commit",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=self.registry,
        )
        self.group_seconds = Histogram(
            "metering_group_commit_seconds",
            "time to write and commit one group",
            registry=self.registry,
        )
        self.stripe_calls = Gauge(
            "metering_stripe_calls",
            "self-service calls running or waiting on the Stripe pool (full: STRIPE_BUSY)",
            registry=self.registry,
        )
        self.refused = Counter(
            "metering_calls_refused_total",
            "calls refused before any work: no service token (UNAUTHENTICATED) or a caller "
            "not allowed the method (PERMISSION_DENIED)",
            ["code"],
            registry=self.registry,
        )
        # Children bound once: RecordUsage is the hot path (a label lookup per call adds up).
        self.events_recorded = self.events.labels("recorded")
        self.events_duplicate = self.events.labels("duplicate")

    def observe_group(self, calls: int, _events: int, seconds: float) -> None:
        self.group_calls.observe(calls)
        self.group_seconds.observe(seconds)


def _event_from_proto(e: metering_pb2.UsageEvent, now: dt.datetime) -> Event:
    at = e.at.ToDatetime(tzinfo=dt.UTC) if e.HasField("at") else now
    return Event(
        event_id=e.event_id,
        org_id=e.org_id,
        project_id=e.project_id,
        model=e.model,
        tokens=e.tokens,
        inputs=e.inputs,
        at=at,
    )


# One place maps ledger errors to status codes.
_CODES: list[tuple[type[LedgerError], grpc.StatusCode]] = [
    (InvalidUsage, grpc.StatusCode.INVALID_ARGUMENT),
    (UnknownOrg, grpc.StatusCode.FAILED_PRECONDITION),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (StripeNotConfigured, grpc.StatusCode.FAILED_PRECONDITION),
    (StripeBusy, grpc.StatusCode.UNAVAILABLE),
    (StripeUnavailable, grpc.StatusCode.UNAVAILABLE),
    (BadSignature, grpc.StatusCode.INVALID_ARGUMENT),
    (LedgerError, grpc.StatusCode.INVALID_ARGUMENT),
]


def status_of(error: LedgerError) -> grpc.StatusCode:
    for kind, code in _CODES:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def _usage_reply(report: UsageReport) -> metering_pb2.GetUsageResponse:
    def cost(amount: Bucket | ProjectUsage) -> dict[str, int]:
        return {
            "tokens": amount.tokens,
            "requests": amount.requests,
            "cost_nanodollars": amount.cost_nanodollars,
        }

    return metering_pb2.GetUsageResponse(
        org_id=report.org_id,
        org_name=report.org_name,
        total_tokens=report.total_tokens,
        total_requests=report.total_requests,
        total_cost_nanodollars=report.total_cost_nanodollars,
        owed_dollars=report.owed_dollars,
        charged_dollars=report.charged_dollars,
        pending_dollars=report.pending_dollars,
        billing_state=report.billing.state,
        billing_ok=report.billing.ok,
        billing_message=report.billing.message,
        has_payment_method=report.has_payment_method,
        buckets=[
            metering_pb2.UsageBucket(day=b.day, project_id=b.project_id, **cost(b))
            for b in report.buckets
        ],
        days=[metering_pb2.DayUsage(day=d.day, **cost(d)) for d in report.days],
        projects=[
            metering_pb2.ProjectUsage(project_id=p.project_id, name=p.name, **cost(p))
            for p in report.projects
        ],
    )


class MeteringServicer(metering_pb2_grpc.MeteringServiceServicer):
    def __init__(
        self,
        ledger: Ledger,
        committer: GroupCommitter,
        metrics: Metrics,
        self_service: SelfService,
        stripe: StripePool,
    ) -> None:
        self._ledger = ledger
        self._committer = committer
        self._metrics = metrics
        self._self_service = self_service
        self._stripe = stripe  # where self-service calls wait on Stripe (a bulkhead)

    async def _fail(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        code: grpc.StatusCode,
        message: str,
        error: LedgerError | None = None,
    ) -> NoReturn:
        await abort(
            context,
            code,
            message,
            field=error.field if error is not None else "",
            reason=error.reason if error is not None else "",
        )

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.RecordUsageResponse:
        now = utcnow()
        events = [_event_from_proto(e, now) for e in request.events]
        try:
            validate_events(events)
            with tracing.span("ledger.commit", **{"usage.events": len(events)}):
                result = await self._committer.record(events)
        except LedgerError as exc:
            code = status_of(exc)
            self._metrics.events.labels("rejected").inc(len(events))
            log.warning(
                "event=record_rejected code=%s events=%d reason=%s", code.name, len(events), exc
            )
            await self._fail(context, "RecordUsage", code, str(exc), exc)
        except Exception as exc:
            log.error("event=record_failed events=%d error=%r", len(events), exc)
            await self._fail(
                context,
                "RecordUsage",
                grpc.StatusCode.UNAVAILABLE,
                "the ledger could not commit the usage; retry with the same event ids",
            )
        self._metrics.events_recorded.inc(result.recorded)
        self._metrics.events_duplicate.inc(result.duplicates)
        self._metrics.tokens.inc(result.tokens)
        return metering_pb2.RecordUsageResponse(
            recorded=result.recorded, duplicates=result.duplicates
        )

    async def Authenticate(
        self, request: metering_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.AuthenticateResponse:
        try:
            info = await asyncio.to_thread(self._ledger.authenticate, request.api_key)
        except Unauthenticated as exc:
            await self._fail(
                context, "Authenticate", grpc.StatusCode.UNAUTHENTICATED, str(exc), exc
            )
        except Exception as exc:
            log.error("event=authenticate_failed error=%r", exc)
            await self._fail(
                context, "Authenticate", grpc.StatusCode.UNAVAILABLE, "the ledger is unavailable"
            )
        return metering_pb2.AuthenticateResponse(
            org_id=info.org_id,
            org_name=info.org_name,
            billing_ok=info.billing.ok,
            billing_state=info.billing.state,
            project_ids=info.project_ids,
            key_id=info.key_id,
            billing_message=info.billing.message,
            requests_per_minute=info.rate_limit_rpm or 0,
            tokens_per_minute=info.rate_limit_tpm or 0,
        )

    async def _in_thread(
        self,
        context: grpc.aio.ServicerContext,
        method: str,
        call: Callable[[], ResultT],
        run: Callable[[Callable[[], ResultT]], Awaitable[ResultT]] = asyncio.to_thread,
    ) -> ResultT:
        """Runs a ledger operation off the event loop (on `run`'s threads). Its LedgerError ends
        the call with the error's status; any other failure (the database, say) with
        UNAVAILABLE."""
        try:
            result = await run(call)
        except LedgerError as exc:
            code = status_of(exc)
            log.info("event=call_refused method=%s code=%s reason=%s", method, code.name, exc)
            await self._fail(context, method, code, str(exc), exc)
        except Exception as exc:
            log.error("event=call_failed method=%s error=%r", method, exc)
            await self._fail(
                context, method, grpc.StatusCode.UNAVAILABLE, "the ledger is unavailable; retry"
            )
        return result

    async def GetUsage(
        self, request: metering_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetUsageResponse:
        if not request.org_id:
            await self._fail(
                context, "GetUsage", grpc.StatusCode.INVALID_ARGUMENT, "org_id is empty"
            )
        since = request.since.ToDatetime(tzinfo=dt.UTC) if request.HasField("since") else None

        def report() -> UsageReport:
            period = parse_range(request.start_date, request.end_date)
            return self._ledger.usage(request.org_id, request.project_id, since, period)

        return _usage_reply(await self._in_thread(context, "GetUsage", report))

    async def CreateBillingSetup(
        self, request: metering_pb2.CreateBillingSetupRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.CreateBillingSetupResponse:
        link = await self._in_thread(
            context,
            "CreateBillingSetup",
            lambda: self._self_service.setup(request.org_id, request.return_url),
            self._stripe.run,
        )
        log.info("event=billing_setup org=%s kind=%s", request.org_id, link.kind)
        return metering_pb2.CreateBillingSetupResponse(
            url=link.url, kind=link.kind, customer_id=link.customer_id
        )

    async def ApplyStripeEvent(
        self, request: metering_pb2.ApplyStripeEventRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.ApplyStripeEventResponse:
        applied = await self._in_thread(
            context,
            "ApplyStripeEvent",
            lambda: self._self_service.apply_event(request.payload, request.signature),
            self._stripe.run,
        )
        return metering_pb2.ApplyStripeEventResponse(
            event_id=applied.event_id,
            type=applied.type,
            duplicate=applied.duplicate,
            outcome=applied.outcome,
            org_id=applied.org_id,
        )


@dataclass
class RunningServer:
    grpc_server: GrpcServer
    committer: GroupCommitter
    stripe: StripePool

    @property
    def port(self) -> int:
        return self.grpc_server.port

    async def stop(self, grace: float, *, quiet_s: float = QUIET_S) -> None:
        """Drains (see `GrpcServer.stop`), then stops the committer and the Stripe pool."""
        await self.grpc_server.stop(grace, quiet_s=quiet_s)
        await self.committer.stop()
        self.stripe.shutdown()


async def start_server(
    ledger: Ledger, settings: Settings, metrics: Metrics, *, address: str | None = None
) -> RunningServer:
    """Starts the gRPC server (SERVING once listening) and its group committer; raises
    NoTokens when the settings name no service token and do not allow serving without."""
    auth = service_identity.interceptor(
        {GATEWAY: settings.gateway_tokens, EMBED: settings.embed_tokens,
         SIDECAR: settings.sidecar_tokens},
        CENTRAL_METHODS,
        insecure=settings.insecure_no_auth,
        on_refused=lambda code: metrics.refused.labels(code).inc(),
    )  # fmt: skip
    identity = [auth] if auth is not None else []
    committer = GroupCommitter(
        ledger.record_calls, max_events=settings.commit_max_events, observe=metrics.observe_group
    )
    self_service = self_service_from(settings, ledger.engine)
    stripe = StripePool(settings.stripe_threads, settings.stripe_queue)
    metrics.stripe_calls.set_function(lambda: stripe.admitted)
    servicer = MeteringServicer(ledger, committer, metrics, self_service, stripe)
    server = GrpcServer(
        SERVICE_NAME,
        lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, s),
        address or f"{settings.host}:{settings.port}",
        options=[("grpc.so_reuseport", 0)],
        interceptors=identity,
        registry=metrics.registry,
    )
    await server.start()
    return RunningServer(server, committer, stripe)


async def _billing_loop(run_once: Callable[[], object], interval_s: float) -> None:
    # A thread of its own: a run waiting on Stripe takes no thread from the ledger's calls or
    # from users' billing setup, and one run at a time never finds it busy.
    runs = StripePool(1, 0, name="billing-run")
    try:
        while True:
            try:
                await runs.run(run_once)
            except Exception:
                log.exception("event=billing_run_failed")
            await asyncio.sleep(interval_s)
    finally:
        runs.shutdown()


async def serve(
    settings: Settings,
    ledger: Ledger,
    billing_run: Callable[[], object] | None = None,
    on_ready: Callable[[int], Awaitable[None]] | None = None,
) -> int:
    """Runs the service until SIGTERM/SIGINT; returns the exit code (2: no service tokens)."""
    metrics = Metrics()
    try:
        running = await start_server(ledger, settings, metrics)
    except service_identity.NoTokens as err:
        log.error("event=refusing_to_start reason=%s", err)
        return 2
    if settings.metrics_port:
        start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
    log.info(
        "event=serving host=%s port=%d metrics_port=%d bill_interval_s=%s",
        settings.host, running.port, settings.metrics_port, settings.bill_interval_s,
    )  # fmt: skip
    billing: asyncio.Task[None] | None = None
    if billing_run is not None and settings.bill_interval_s > 0:
        billing = asyncio.create_task(_billing_loop(billing_run, settings.bill_interval_s))
    if on_ready is not None:
        await on_ready(running.port)
    await until_signalled()
    log.info("event=shutting_down grace_s=%s", settings.shutdown_grace_s)
    if billing is not None:
        # A billing run in its worker thread finishes its current charge on its own; the
        # ledger's pending rows make an interrupted run safe to resume at next start.
        billing.cancel()
    await running.stop(settings.shutdown_grace_s)
    log.info("event=stopped")
    return 0
