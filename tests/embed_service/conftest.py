"""Fixtures of the embedding-service tests: loaded models (once per session), an in-process
server on 127.0.0.1:0 reached through a real grpc.aio channel, and a fake central metering."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import pytest

from devstack import probes
from embed_service.model import EmbeddingModel
from embed_service.server import EmbedServer
from embed_service.settings import Settings
from embed_service.usage import NullUsageSink, UsageSink
from intent_embed.v1 import embed_pb2_grpc
from tests.embed_service.harness import Gate, Running, ServeFactory
from tests.support.fake_metering import FakeMetering, FakeServer


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> EmbeddingModel:
    # The PyTorch path; the ONNX Runtime path has its own tests (test_backends.py).
    return EmbeddingModel.from_directory(
        tiny_model_dir, device="cpu", dtype="float32", backend="torch"
    )


@pytest.fixture(scope="session")
def minilm_fp32(minilm_dir: Path) -> EmbeddingModel:
    return EmbeddingModel.from_directory(
        minilm_dir, device="cpu", dtype="float32", backend="torch"
    )


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[EmbeddingModel], Gate]]:
    gates: list[Gate] = []

    def make(model: EmbeddingModel) -> Gate:
        gates.append(Gate(model, monkeypatch))
        return gates[-1]

    yield make
    for g in gates:
        g.open()  # never leave the forward thread blocked


@pytest.fixture
def serve() -> ServeFactory:
    """`async with serve(model, sink=..., **settings) as running:` an in-process server."""

    @asynccontextmanager
    async def run(
        model: EmbeddingModel,
        sink: UsageSink | None = None,
        start: bool = True,
        **overrides: Any,
    ) -> AsyncIterator[Running]:
        settings = Settings(host="127.0.0.1", port=0, metering_addr="", **overrides)
        server = EmbedServer(model, sink or NullUsageSink(), settings)
        if start:
            await server.start()
        address = f"127.0.0.1:{server.port}"
        channel = grpc.aio.insecure_channel(
            address, options=[("grpc.max_receive_message_length", 64 * 1024 * 1024)]
        )
        try:
            yield Running(server, channel, embed_pb2_grpc.EmbedServiceStub(channel), address)
        finally:
            await channel.close()
            await server.stop(grace=1.0, quiet_s=0)

    return run


@pytest.fixture
async def fake_metering() -> AsyncIterator[tuple[FakeMetering, str]]:
    """Central metering that knows only org_1."""
    fake = FakeMetering(known_orgs={"org_1"})
    async with FakeServer.metering(fake) as server:
        yield fake, server.address


@pytest.fixture
def free_port() -> int:
    """A port nothing listens on (an unreachable upstream)."""
    return probes.free_port()
