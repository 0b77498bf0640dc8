"""Wiring of the sidecar: the gRPC server around an opened spool, the spool writer and the
forwarder; the SIGTERM drain; the process's run.

SIGTERM stops accepting, forwards what is spooled within ``METERING_SHUTDOWN_GRACE_S`` and
exits 0 when the spool was drained, 3 when events were left in it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import grpc
from prometheus_client import start_http_server

from intent_embed import tracing
from intent_embed.grpc_server import GrpcServer, until_signalled
from intent_embed.service_auth import client_interceptors
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering import service_identity
from metering.service_identity import EMBED, SIDECAR_METHODS
from metering.sidecar.forwarder import Forwarder, watch_central
from metering.sidecar.metrics import SidecarMetrics
from metering.sidecar.servicer import SidecarServicer
from metering.sidecar.settings import SidecarSettings
from metering.sidecar.spool import Spool
from metering.sidecar.writer import SpoolWriter

log = logging.getLogger("metering.sidecar")

SERVICE_NAME = metering_pb2.DESCRIPTOR.services_by_name["MeteringService"].full_name
# gRPC's own reconnect backoff grows to 120 s by default, and while it waits every call fails
# fast: a recovered central would sit idle for minutes. Reconnecting within a second is cheap
# (one refused TCP connect); the forwarder's backoff paces the calls.
_CENTRAL_CHANNEL_OPTIONS = [
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.lb_policy_name", "round_robin"),
]


@dataclass
class Sidecar:
    """A started sidecar: what :func:`shutdown` needs to stop it in order."""

    grpc_server: GrpcServer
    servicer: SidecarServicer
    writer: SpoolWriter
    forwarder: Forwarder
    forward_task: asyncio.Task[None]
    watch_task: asyncio.Task[None]
    channel: grpc.aio.Channel
    spool: Spool

    @property
    def port(self) -> int:
        return self.grpc_server.port


async def start_sidecar(
    settings: SidecarSettings, metrics: SidecarMetrics, spool: Spool
) -> Sidecar:
    """Build and start the gRPC server and the forwarder around an opened spool; raises
    NoTokens when no embed token is set and serving without is not allowed."""
    auth = service_identity.interceptor(
        {EMBED: settings.embed_tokens}, SIDECAR_METHODS, insecure=settings.insecure_no_auth
    )
    channel = grpc.aio.insecure_channel(
        settings.central_addr,
        options=_CENTRAL_CHANNEL_OPTIONS,
        interceptors=[
            *tracing.client_interceptors(),
            *client_interceptors(settings.central_token),
        ],
    )
    forwarder = Forwarder(
        spool, metering_pb2_grpc.MeteringServiceStub(channel), settings, metrics
    )
    writer = SpoolWriter(spool)
    servicer = SidecarServicer(writer, forwarder, metrics)
    server = GrpcServer(
        SERVICE_NAME,
        lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, s),
        f"{settings.host}:{settings.port}",
        interceptors=[auth] if auth is not None else [],
        registry=metrics.registry,
    )
    await server.start()
    forward_task = asyncio.create_task(forwarder.run(), name="forwarder")
    watch_task = asyncio.create_task(watch_central(channel, forwarder), name="watch-central")
    log.info(
        "sidecar serving addr=%s:%d central=%s spool=%s depth=%d",
        settings.host, server.port, settings.central_addr, spool.path, spool.depth,
    )  # fmt: skip
    return Sidecar(server, servicer, writer, forwarder, forward_task, watch_task, channel, spool)


async def shutdown(sidecar: Sidecar, grace_s: float) -> int:
    """Stop accepting, forward what is spooled within ``grace_s``; the events left behind."""
    deadline = time.monotonic() + grace_s
    sidecar.servicer.accepting = False
    # In-flight RecordUsage calls finish (their events are spooled, so they get forwarded).
    await sidecar.grpc_server.stop(min(1.0, grace_s))
    await sidecar.writer.close()
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
    """Run until SIGTERM/SIGINT; exit status 0 when the spool was drained, 3 otherwise, 2
    without service tokens."""
    spool = Spool(
        settings.spool_path,
        max_events=settings.spool_max_events,
        synchronous=settings.spool_synchronous,
        dedup_window_s=settings.spool_dedup_window_s,
    )
    metrics = SidecarMetrics(spool)
    try:
        try:
            sidecar = await start_sidecar(settings, metrics, spool)
        except service_identity.NoTokens as err:
            log.error("refusing to start: %s", err)
            return 2
        # /metrics answers only once gRPC serves: the gRPC port is on localhost, out of the
        # kubelet's reach, so the pod's probes of this container use the metrics port.
        metrics_server, metrics_thread = start_http_server(
            settings.metrics_port, addr=settings.metrics_host, registry=metrics.registry
        )
        try:
            await until_signalled()
            log.info("signal received, draining grace_s=%.1f", settings.shutdown_grace_s)
            left = await shutdown(sidecar, settings.shutdown_grace_s)
        finally:
            metrics_server.shutdown()
            metrics_thread.join(timeout=5)
    finally:
        spool.close()
    return 0 if left == 0 else 3


def run(settings: SidecarSettings) -> int:
    """The sidecar process: 2 without a central address, else `serve`'s exit status."""
    if not settings.central_addr:
        log.error("METERING_CENTRAL_ADDR is empty: the sidecar has nowhere to forward usage")
        return 2
    if not settings.central_token:
        log.warning("METERING_CENTRAL_TOKEN is empty: central metering will refuse the usage "
                    "this sidecar forwards unless it runs without service tokens")  # fmt: skip
    return asyncio.run(serve(settings))
