"""Fixtures of the gateway tests: the fakes (one set per package), their script reset after each
test, and the gateway in front of them (see harness.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from intent_embed.v1 import embed_pb2_grpc
from tests.gateway.harness import (
    FakeEmbed,
    Fakes,
    GatewayServer,
    Script,
    fake_metering,
)
from tests.support.fake_metering import FakeServer, ThreadedServer


@pytest.fixture(scope="package")
def fakes() -> Iterator[Fakes]:
    script = Script()
    embed = FakeEmbed(script)
    metering = fake_metering(script)
    embed_server = FakeServer(
        "intent_embed.v1.EmbedService",
        lambda server: embed_pb2_grpc.add_EmbedServiceServicer_to_server(embed, server),
    )
    with (
        ThreadedServer(embed_server) as embed_up,
        ThreadedServer(FakeServer.metering(metering)) as metering_up,
    ):
        yield Fakes(script, embed, metering, embed_up, metering_up)


@pytest.fixture(autouse=True)
def _reset_script(fakes: Fakes) -> Iterator[None]:
    yield
    script = fakes.script
    script.embed_failures.clear()
    script.auth_failures.clear()
    script.revoked.clear()
    script.embed_delay_s = 0.0
    script.embed_packed = True


@pytest.fixture(scope="package")
def gateway(fakes: Fakes) -> Iterator[GatewayServer]:
    with GatewayServer(fakes.settings()) as server:
        yield server
