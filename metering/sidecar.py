"""The metering sidecar: accepts usage on localhost, spools it durably, forwards it to the ledger.

Runs as ``python -m metering sidecar`` next to every embed server (the same Kubernetes pod). It
serves ``MeteringService.RecordUsage`` from the generated stubs: a call is validated, appended to
the SQLite spool (:mod:`metering.spool`; concurrent calls share one commit) and acknowledged only
after that commit, so the embed service can answer its client as soon as usage is durable, even
while the central metering service is down. A forwarder task sends spooled events in batches to
the central ``RecordUsage`` and removes them only after the central ack (event ids make a
repeated delivery a duplicate there, never double usage); transient failures are retried with
capped exponential backoff, cut short when the channel to central becomes ready again, while a
batch the central service rejects as invalid is split until the offending events are isolated
and moved to a dead-letter table. ``Authenticate`` and ``GetUsage`` answer UNIMPLEMENTED:
callers talk to the central service for those. SIGTERM stops accepting, forwards what is
spooled within ``METERING_SHUTDOWN_GRACE_S`` and exits. This module also holds the sidecar's
settings (``SidecarSettings``, env prefix ``METERING_``) and its Prometheus metrics.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import signal
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server
from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from intent_embed.usage_events import first_problem
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.spool import AppendResult, Spool, SpooledEvent, SpoolFullError

log = logging.getLogger("metering.sidecar")

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
# Central answers that mean "this batch can never succeed as sent": retrying is pointless.
REJECTED_CODES = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION)


class SidecarSettings(BaseSettings):
    """Settings of the sidecar process; every field is read from ``METERING_<FIELD>``."""

    model_config = SettingsConfigDict(env_prefix="METERING_", extra="ignore")

    host: str = Field(
        "127.0.0.1", description="gRPC listen address; localhost, only the embed server calls it"
    )
    port: int = Field(50052, description="gRPC port (the embed server's METERING_ADDR)")
    metrics_host: str = Field("0.0.0.0", description="Prometheus /metrics listen address")
    metrics_port: int = Field(9102, description="Prometheus /metrics port")
    spool_path: str = Field("./metering-spool.db", description="SQLite spool file (WAL mode)")
    spool_max_events: int = Field(
        100_000, ge=1, description="spool capacity; beyond it RecordUsage is RESOURCE_EXHAUSTED"
    )
    spool_synchronous: Literal["full", "normal"] = Field(
        "full", description="SQLite synchronous: full survives power loss, normal a crash"
    )
    spool_dedup_window_s: float = Field(
        600.0, gt=0, description="forwarded ids remembered this long to count retries as dups"
    )
    central_addr: str = Field(
        "", description="central metering gRPC target, e.g. dns:///metering:50052 (required)"
    )
    forward_batch: int = Field(500, ge=1, description="events per forwarded RecordUsage call")
    forward_interval_s: float = Field(
        1.0, gt=0, description="idle poll interval of the forwarder, and its first retry pause"
    )
    forward_timeout_s: float = Field(10.0, gt=0, description="deadline of one forward call")
    forward_backoff_max_s: float = Field(
        30.0, gt=0, description="cap of the retry backoff after forward errors"
    )
    shutdown_grace_s: float = Field(
        25.0, ge=0, description="time after SIGTERM to forward what is spooled"
    )
    log_level: str = Field("INFO", description="logging level")


class SidecarMetrics:
    """The sidecar's Prometheus metrics, in a registry of their own (no process globals)."""

    def __init__(self, spool: Spool) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        depth = Gauge(
            "metering_sidecar_spool_depth", "Usage events spooled, not yet acked by central",
            registry=r,
        )
        depth.set_function(lambda: spool.depth)
        age = Gauge(
            "metering_sidecar_oldest_unforwarded_age_seconds",
            "Age of the oldest spooled event (0 when the spool is empty)",
            registry=r,
        )
        age.set_function(lambda: _age(spool.oldest_spooled_at))
        capacity = Gauge(
            "metering_sidecar_spool_capacity", "METERING_SPOOL_MAX_EVENTS", registry=r
        )
        capacity.set(spool.max_events)
        dead = Gauge(
            "metering_sidecar_dead_letter_depth", "Events in the dead-letter table", registry=r
        )
        dead.set_function(lambda: spool.dead_letter_count)
        self.record_requests = Counter(
            "metering_sidecar_record_requests", "RecordUsage calls answered, by status code",
            ["code"], registry=r,
        )
        self.recorded_events = Counter(
            "metering_sidecar_recorded_events", "Events accepted into the spool", registry=r
        )
        self.duplicate_events = Counter(
            "metering_sidecar_duplicate_events", "Events already known (retries)", registry=r
        )
        self.forwarded_events = Counter(
            "metering_sidecar_forwarded_events", "Events acked by the central ledger", registry=r
        )
        self.forward_errors = Counter(
            "metering_sidecar_forward_errors", "Failed forward calls, by gRPC code",
            ["code"], registry=r,
        )
        self.dead_letters = Counter(
            "metering_sidecar_dead_letters", "Events moved to the dead-letter table", registry=r
        )


def _age(oldest: float | None) -> float:
    return 0.0 if oldest is None else max(0.0, time.time() - oldest)


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


class SpoolWriter:
    """Group commit: RecordUsage calls arriving while a commit runs share the next one.

    One fsync per group instead of one per call: under load the spool's throughput follows
    the callers' concurrency instead of the disk's sync latency.
    """

    MAX_CALLS_PER_COMMIT = 512

    def __init__(self, spool: Spool) -> None:
        self._spool = spool
        self._pending: list[
            tuple[Sequence[tuple[str, bytes]], asyncio.Future[AppendResult]]
        ] = []
        self._wake = asyncio.Event()

    async def append(self, entries: Sequence[tuple[str, bytes]]) -> AppendResult:
        """Durably spooled when this returns; raises SpoolFullError when it does not fit."""
        future: asyncio.Future[AppendResult] = asyncio.get_running_loop().create_future()
        self._pending.append((entries, future))
        self._wake.set()
        return await future

    async def run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                group = self._pending[: self.MAX_CALLS_PER_COMMIT]
                del self._pending[: len(group)]
                results: list[AppendResult | BaseException]
                try:
                    results = list(await asyncio.to_thread(
                        self._spool.append_many, [entries for entries, _ in group]
                    ))
                except Exception as err:  # a disk error: every caller of the group fails
                    log.exception("spool commit failed calls=%d", len(group))
                    results = [err] * len(group)
                for (_, future), result in zip(group, results, strict=True):
                    if future.done():  # the caller went away; its events are spooled anyway
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)


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
            await self._abort(context, grpc.StatusCode.INVALID_ARGUMENT, problem.message)
        entries = [(e.event_id, e.SerializeToString()) for e in request.events]
        try:
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
        self._metrics.record_requests.labels(code="OK").inc()
        self._metrics.recorded_events.inc(result.recorded)
        self._metrics.duplicate_events.inc(result.duplicates)
        return metering_pb2.RecordUsageResponse(
            recorded=result.recorded, duplicates=result.duplicates
        )

    async def Authenticate(
        self, request: metering_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.AuthenticateResponse:
        await self._abort(
            context,
            grpc.StatusCode.UNIMPLEMENTED,
            "the metering sidecar only records usage; call the central metering service",
        )

    async def GetUsage(
        self, request: metering_pb2.GetUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.GetUsageResponse:
        await self._abort(
            context,
            grpc.StatusCode.UNIMPLEMENTED,
            "the metering sidecar only records usage; call the central metering service",
        )

    async def _abort(
        self, context: grpc.aio.ServicerContext, code: grpc.StatusCode, message: str
    ) -> NoReturn:
        self._metrics.record_requests.labels(code=code.name).inc()
        await context.abort(code, message)
        raise AssertionError("context.abort always raises")


@dataclass
class Sidecar:
    """A started sidecar: what :func:`shutdown` needs to stop it in order."""

    server: grpc.aio.Server
    health: health_aio.HealthServicer
    servicer: SidecarServicer
    forwarder: Forwarder
    forward_task: asyncio.Task[None]
    writer_task: asyncio.Task[None]
    watch_task: asyncio.Task[None]
    channel: grpc.aio.Channel
    spool: Spool
    port: int


async def start_sidecar(
    settings: SidecarSettings, metrics: SidecarMetrics, spool: Spool
) -> Sidecar:
    """Build and start the gRPC server and the forwarder around an opened spool."""
    channel = grpc.aio.insecure_channel(
        settings.central_addr,
        options=[
            # gRPC's own reconnect backoff grows to 120 s by default, and while it waits every
            # call fails fast: a recovered central would sit idle for minutes. Reconnecting
            # within a second is cheap (one refused TCP connect); our backoff paces the calls.
            ("grpc.initial_reconnect_backoff_ms", 200),
            ("grpc.min_reconnect_backoff_ms", 200),
            ("grpc.max_reconnect_backoff_ms", 1000),
            ("grpc.lb_policy_name", "round_robin"),
        ],
    )
    forwarder = Forwarder(
        spool, metering_pb2_grpc.MeteringServiceStub(channel), settings, metrics
    )
    writer = SpoolWriter(spool)
    writer_task = asyncio.create_task(writer.run(), name="spool-writer")
    servicer = SidecarServicer(writer, forwarder, metrics)
    health = health_aio.HealthServicer()
    server = grpc.aio.server()
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    reflection.enable_server_reflection(
        (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
         reflection.SERVICE_NAME),
        server,
    )
    port = server.add_insecure_port(f"{settings.host}:{settings.port}")
    await server.start()
    for name in ("", SERVICE_NAME):
        await health.set(name, health_pb2.HealthCheckResponse.SERVING)
    forward_task = asyncio.create_task(forwarder.run(), name="forwarder")
    watch_task = asyncio.create_task(watch_central(channel, forwarder), name="watch-central")
    log.info(
        "sidecar serving addr=%s:%d central=%s spool=%s depth=%d",
        settings.host, port, settings.central_addr, spool.path, spool.depth,
    )
    return Sidecar(
        server, health, servicer, forwarder,
        forward_task, writer_task, watch_task, channel, spool, port,
    )


async def shutdown(sidecar: Sidecar, grace_s: float) -> int:
    """Stop accepting, forward what is spooled within ``grace_s``; the events left behind."""
    deadline = time.monotonic() + grace_s
    sidecar.servicer.accepting = False
    await sidecar.health.enter_graceful_shutdown()
    # In-flight RecordUsage calls finish (their events are spooled, so they get forwarded).
    await sidecar.server.stop(min(1.0, grace_s))
    sidecar.writer_task.cancel()  # no call is left waiting on it
    sidecar.forwarder.drain_by(deadline)
    try:
        await asyncio.wait_for(
            asyncio.shield(sidecar.forward_task), max(0.0, deadline - time.monotonic()) + 1.0
        )
    except TimeoutError:
        sidecar.forward_task.cancel()
    sidecar.watch_task.cancel()
    await sidecar.channel.close()
    left = sidecar.spool.depth
    if left:
        log.error("shutdown with unforwarded events left=%d spool=%s", left, sidecar.spool.path)
    else:
        log.info("shutdown drained spool=%s", sidecar.spool.path)
    return left


async def serve(settings: SidecarSettings) -> int:
    """Run until SIGTERM/SIGINT; exit status 0 when the spool was drained, 3 otherwise."""
    spool = Spool(
        settings.spool_path,
        max_events=settings.spool_max_events,
        synchronous=settings.spool_synchronous,
        dedup_window_s=settings.spool_dedup_window_s,
    )
    metrics = SidecarMetrics(spool)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        sidecar = await start_sidecar(settings, metrics, spool)
        # /metrics answers only once gRPC serves: the gRPC port is on localhost, out of the
        # kubelet's reach, so the pod's probes of this container use the metrics port.
        metrics_server, metrics_thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
        try:
            await stop.wait()
            log.info("signal received, draining grace_s=%.1f", settings.shutdown_grace_s)
            left = await shutdown(sidecar, settings.shutdown_grace_s)
        finally:
            metrics_server.shutdown()
            metrics_thread.join(timeout=5)
    finally:
        spool.close()
    return 0 if left == 0 else 3


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metering sidecar",
        description=(
            "Metering sidecar: accepts RecordUsage on localhost, spools usage durably, "
            "forwards it to the central metering service. Every option falls back to its "
            "environment variable, then to the default shown."
        ),
    )
    for name, field in SidecarSettings.model_fields.items():
        env = f"METERING_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            help=f"{field.description} [env {env}, default {field.default!r}]",
        )
    return parser


def main(argv: list[str]) -> int:
    """Entry point of ``python -m metering sidecar [options]``."""
    args = _parser().parse_args(argv)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if v is not None}
    settings = SidecarSettings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    if not settings.central_addr:
        log.error("METERING_CENTRAL_ADDR is empty: the sidecar has nowhere to forward usage")
        return 2
    return asyncio.run(serve(settings))


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
