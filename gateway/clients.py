"""The gateway's gRPC clients: one long-lived channel per upstream (embed service, metering).

Channels are opened once in the app's lifespan and shared by every request; opening one per
request would cost a TCP and HTTP/2 handshake each time and defeat round_robin balancing.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from gateway.settings import Settings
from intent_embed import tracing
from intent_embed.service_auth import client_interceptors
from intent_embed.v1 import embed_pb2_grpc, metering_pb2_grpc

log = logging.getLogger(__name__)

EMBED_SERVICE = "intent_embed.v1.EmbedService"
METERING_SERVICE = "intent_embed.v1.MeteringService"

# round_robin spreads calls over every address the dns:/// target resolves to (the pods of a
# headless Service); the default pick_first would pin all traffic of this replica to one pod.
# An Embed call that finds its pod UNAVAILABLE (draining, just gone) is tried once more, by
# gRPC itself, with the same message: the request id, the usage idempotency key, stays the same.
# Metering's reads (Authenticate, GetUsage) change nothing and are retried the same way;
# CreateBillingSetup is not: a retry could open a second Stripe session.
_SERVICE_CONFIG = json.dumps(
    {
        "loadBalancingConfig": [{"round_robin": {}}],
        "methodConfig": [
            {
                "name": [
                    {"service": "intent_embed.v1.EmbedService", "method": "Embed"},
                    {"service": "intent_embed.v1.MeteringService", "method": "Authenticate"},
                    {"service": "intent_embed.v1.MeteringService", "method": "GetUsage"},
                ],
                "retryPolicy": {
                    "maxAttempts": 2,
                    "initialBackoff": "0.01s",
                    "maxBackoff": "0.05s",
                    "backoffMultiplier": 2,
                    "retryableStatusCodes": ["UNAVAILABLE"],
                },
            }
        ],
    }
)

_CHANNEL_OPTIONS: tuple[tuple[str, int | str], ...] = (
    ("grpc.service_config", _SERVICE_CONFIG),
    ("grpc.enable_retries", 1),  # the service config's retryPolicy
    # Keepalive finds dead connections (a pod gone without FIN) before a request waits on one.
    # Pings go out only while calls are in flight (permit_without_calls=0), which servers on
    # default settings accept without answering too_many_pings.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    ("grpc.keepalive_permit_without_calls", 0),
    # A 2048-input float response is ~3 MiB packed, far more as repeated floats.
    ("grpc.max_receive_message_length", 64 * 1024 * 1024),
    ("grpc.max_send_message_length", 64 * 1024 * 1024),
    ("grpc.dns_min_time_between_resolutions_ms", 5_000),
)


@dataclass
class Upstreams:
    """The open channels and stubs a running app uses; closed by the lifespan."""

    embed_channel: grpc.aio.Channel
    metering_channel: grpc.aio.Channel
    embed: embed_pb2_grpc.EmbedServiceStub = field(init=False)
    metering: metering_pb2_grpc.MeteringServiceStub = field(init=False)
    embed_health: health_pb2_grpc.HealthStub = field(init=False)
    metering_health: health_pb2_grpc.HealthStub = field(init=False)

    def __post_init__(self) -> None:
        self.embed = embed_pb2_grpc.EmbedServiceStub(self.embed_channel)
        self.metering = metering_pb2_grpc.MeteringServiceStub(self.metering_channel)
        self.embed_health = health_pb2_grpc.HealthStub(self.embed_channel)
        self.metering_health = health_pb2_grpc.HealthStub(self.metering_channel)

    async def close(self) -> None:
        await self.embed_channel.close()
        await self.metering_channel.close()


def open_upstreams(settings: Settings) -> Upstreams:
    """Open both channels (lazily connecting: a down upstream does not stop start-up)."""
    log.info(
        "upstreams_open embed_addr=%s metering_addr=%s", settings.embed_addr, settings.metering_addr
    )
    if not settings.metering_token:
        log.warning(
            "metering_token_empty reason=GATEWAY_METERING_TOKEN is empty, metering refuses "
            "the gateway's calls unless it runs without service tokens"
        )
    return Upstreams(
        embed_channel=grpc.aio.insecure_channel(
            settings.embed_addr,
            options=_CHANNEL_OPTIONS,
            interceptors=tracing.client_interceptors(),
        ),
        metering_channel=grpc.aio.insecure_channel(
            settings.metering_addr,
            options=_CHANNEL_OPTIONS,
            interceptors=[
                *tracing.client_interceptors(),
                *client_interceptors(settings.metering_token),
            ],
        ),
    )


async def check_serving(stub: health_pb2_grpc.HealthStub, service: str, deadline_s: float) -> str:
    """The upstream's health status name, or why it could not be asked."""
    try:
        reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=deadline_s)
    except grpc.aio.AioRpcError as err:
        return err.code().name
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


__all__ = [
    "EMBED_SERVICE",
    "METERING_SERVICE",
    "Upstreams",
    "check_serving",
    "open_upstreams",
]
