"""Central metering serves the project's services only: a call without a known service token is
UNAUTHENTICATED, one from a service not allowed the method PERMISSION_DENIED, and neither
changes anything; RecordUsage is for embed services and sidecars, the rest for the gateway;
a role may hold two tokens while one is rotated; and a process given no tokens at all refuses
to start unless told it runs without them."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from intent_embed.rich_status import details_of
from intent_embed.service_auth import NO_SERVICE_TOKEN, ROLE_NOT_ALLOWED
from intent_embed.v1 import metering_pb2, metering_pb2_grpc
from metering.ledger import Ledger
from metering.server import Metrics, RunningServer, start_server
from metering.settings import Settings

REPO_ROOT = Path(__file__).resolve().parents[2]
GATEWAY, GATEWAY_NEXT, EMBED, SIDECAR = "gw-token-1", "gw-token-2", "embed-token", "sidecar-token"


@dataclass
class Guarded:
    ledger: Ledger
    metrics: Metrics
    running: RunningServer
    stub: metering_pb2_grpc.MeteringServiceStub
    channel: grpc.aio.Channel
    org: str
    key: str


@pytest.fixture
async def guarded(ledger: Ledger) -> AsyncIterator[Guarded]:
    settings = Settings(
        gateway_tokens=f"{GATEWAY}, {GATEWAY_NEXT}", embed_tokens=EMBED, sidecar_tokens=SIDECAR
    )
    metrics = Metrics()
    running = await start_server(ledger, settings, metrics, address="127.0.0.1:0")
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{running.port}")
    org = ledger.create_org("acme", "cus_1").id
    _, key = ledger.create_key(org)
    try:
        yield Guarded(ledger, metrics, running, metering_pb2_grpc.MeteringServiceStub(channel),
                      channel, org, key)  # fmt: skip
    finally:
        await channel.close()
        await running.stop(1.0, quiet_s=0)


def _as(token: str | None) -> list[tuple[str, str]] | None:
    return None if token is None else [("authorization", f"Bearer {token}")]


Call = Callable[[Guarded, str | None], Awaitable[Any]]


def _record(g: Guarded, token: str | None) -> Awaitable[Any]:
    event = metering_pb2.UsageEvent(event_id="req-1", org_id=g.org, tokens=9, inputs=1)
    return g.stub.RecordUsage(metering_pb2.RecordUsageRequest(events=[event]), metadata=_as(token))


def _authenticate(g: Guarded, token: str | None) -> Awaitable[Any]:
    return g.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=g.key), metadata=_as(token))


def _usage(g: Guarded, token: str | None) -> Awaitable[Any]:
    return g.stub.GetUsage(metering_pb2.GetUsageRequest(org_id=g.org), metadata=_as(token))


def _setup(g: Guarded, token: str | None) -> Awaitable[Any]:
    request = metering_pb2.CreateBillingSetupRequest(org_id=g.org, return_url="https://x.test/")
    return g.stub.CreateBillingSetup(request, metadata=_as(token))


def _webhook(g: Guarded, token: str | None) -> Awaitable[Any]:
    request = metering_pb2.ApplyStripeEventRequest(payload=b"{}", signature="t=1,v1=00")
    return g.stub.ApplyStripeEvent(request, metadata=_as(token))


GATEWAY_CALLS: list[Call] = [_authenticate, _usage, _setup, _webhook]
EVERY_CALL: list[Call] = [_record, *GATEWAY_CALLS]


async def _refused(call: Call, g: Guarded, token: str | None) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(g, token)
    return info.value.code(), details_of(info.value).reason


@pytest.mark.parametrize("token", [None, "", "not-a-service-token", f"{GATEWAY} "])
async def test_a_call_without_a_known_token_is_unauthenticated_and_changes_nothing(
    guarded: Guarded, token: str | None
) -> None:
    for call in EVERY_CALL:
        assert await _refused(call, guarded, token) == (
            grpc.StatusCode.UNAUTHENTICATED, NO_SERVICE_TOKEN,
        ), call.__name__  # fmt: skip
    assert guarded.ledger.usage(guarded.org).total_tokens == 0
    refused = guarded.metrics.refused.labels("UNAUTHENTICATED")._value.get()
    assert refused == len(EVERY_CALL)


async def test_a_service_calling_what_its_role_may_not_is_denied_and_changes_nothing(
    guarded: Guarded,
) -> None:
    denied = (grpc.StatusCode.PERMISSION_DENIED, ROLE_NOT_ALLOWED)
    # The gateway cannot bill an org for usage it makes up.
    assert await _refused(_record, guarded, GATEWAY) == denied
    # An embed pod or a sidecar cannot read usage, check keys, open billing or fake webhooks.
    for token in (EMBED, SIDECAR):
        for call in GATEWAY_CALLS:
            assert await _refused(call, guarded, token) == denied, (token, call.__name__)
    assert guarded.ledger.usage(guarded.org).total_tokens == 0


async def test_each_service_is_served_what_its_role_may_call(guarded: Guarded) -> None:
    assert (await _record(guarded, EMBED)).recorded == 1
    # The sidecar forwarding the same request: a duplicate, counted once.
    assert (await _record(guarded, SIDECAR)).duplicates == 1
    for token in (GATEWAY, GATEWAY_NEXT):  # either token of a role being rotated
        assert (await _authenticate(guarded, token)).org_id == guarded.org
        assert (await _usage(guarded, token)).total_tokens == 9
    # Probes carry no token: health answers them.
    health = health_pb2_grpc.HealthStub(guarded.channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_one_token_for_two_roles_is_refused_at_start() -> None:
    from metering.service_identity import CENTRAL_METHODS, interceptor

    with pytest.raises(ValueError, match="two roles"):
        interceptor({"gateway": "same", "embed": "same"}, CENTRAL_METHODS, insecure=False)


@pytest.mark.parametrize(
    ("command", "named"),
    [(["serve"], "METERING_GATEWAY_TOKENS"), (["sidecar"], "METERING_EMBED_TOKENS")],
)
def test_a_process_without_tokens_refuses_to_start(
    tmp_path: Path, command: list[str], named: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("METERING_")}
    env.update({
        "METERING_DATABASE_URL": f"sqlite:///{tmp_path / 'ledger.db'}",
        "METERING_MIGRATE_ON_START": "true",
        "METERING_HOST": "127.0.0.1", "METERING_PORT": "0", "METERING_METRICS_PORT": "0",
        "METERING_BILL_INTERVAL_S": "0",
        "METERING_CENTRAL_ADDR": "127.0.0.1:1", "METERING_SPOOL_PATH": str(tmp_path / "s.db"),
    })  # fmt: skip
    result = subprocess.run(
        [sys.executable, "-m", "metering", *command], cwd=REPO_ROOT, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    assert named in result.stderr and "METERING_INSECURE_NO_AUTH" in result.stderr
