"""Fixtures of the embedding-service tests: loaded models (once per session), an in-process
server on 127.0.0.1:0 reached through a real grpc.aio channel, and a fake MeteringService."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from embed_service.model import EmbeddingModel
from embed_service.server import EmbedServer, build_server
from embed_service.settings import Settings
from embed_service.usage import NullUsageSink, UsageSink
from intent_embed.v1 import embed_pb2_grpc, metering_pb2, metering_pb2_grpc

REPO_ROOT = Path(__file__).resolve().parents[2]
CLINC150 = REPO_ROOT.parent / "shared" / "data" / "clinc150" / "data_full.json"

# Used when the CLINC150 file is not next to the repository (a bare clone): short queries of
# the same kind, so the comparison tests still run on realistic inputs.
_FALLBACK_QUERIES = [
    "how would you say fly in italian", "what's the spanish word for pasta",
    "my card was charged twice", "what is my account balance", "set an alarm for 7 am",
    "book a table for two at an italian place", "how long does it take to boil an egg",
    "is my flight on time", "transfer 200 dollars to my savings", "what's the weather tomorrow",
    "i lost my credit card", "tell me a joke", "how many calories in a banana",
    "what is the exchange rate for euros", "play some jazz", "cancel my reservation",
    "when is my next meeting", "change my pin number please", "who made you",
    "what's the meaning of life", "order more paper towels", "remind me to call mom at 5",
]


def clinc_test_texts(every: int = 1) -> list[str]:
    if CLINC150.exists():
        rows = json.loads(CLINC150.read_text())["test"]
        return [text for text, _ in rows[::every]]
    return list(_FALLBACK_QUERIES)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir: Path) -> EmbeddingModel:
    return EmbeddingModel.from_directory(tiny_model_dir, device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def minilm_fp32(minilm_dir: Path) -> EmbeddingModel:
    return EmbeddingModel.from_directory(minilm_dir, device="cpu", dtype="float32")


class Gate:
    """Holds every forward pass of a model until opened; counts the passes that started."""

    def __init__(self, model: EmbeddingModel, monkeypatch: pytest.MonkeyPatch) -> None:
        self._open = threading.Event()
        self.started = threading.Semaphore(0)
        self.batches: list[int] = []
        original = model.embed_ids

        def gated(batch: Any) -> np.ndarray:
            self.batches.append(len(batch))
            self.started.release()
            self._open.wait(timeout=60)
            return original(batch)

        monkeypatch.setattr(model, "embed_ids", gated)

    def open(self) -> None:
        self._open.set()

    async def wait_started(self, within_s: float = 10.0) -> None:
        ok = await asyncio.to_thread(self.started.acquire, True, within_s)
        assert ok, "no forward pass started"


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[EmbeddingModel], Gate]]:
    gates: list[Gate] = []

    def make(model: EmbeddingModel) -> Gate:
        gates.append(Gate(model, monkeypatch))
        return gates[-1]

    yield make
    for g in gates:
        g.open()  # never leave the forward thread blocked


@dataclass
class Running:
    server: EmbedServer
    channel: grpc.aio.Channel
    stub: embed_pb2_grpc.EmbedServiceStub
    address: str


ServeFactory = Callable[..., AbstractAsyncContextManager[Running]]


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
        server = build_server(model, sink or NullUsageSink(), settings)
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
            await server.stop(grace=1.0)

    return run


@dataclass
class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    """Stores RecordUsage events; `known_orgs` limits who may be billed; `hold` delays acks."""

    known_orgs: set[str] = field(default_factory=lambda: {"org_1"})
    events: list[metering_pb2.UsageEvent] = field(default_factory=list)
    hold: asyncio.Event | None = None
    received: asyncio.Event = field(default_factory=asyncio.Event)

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.RecordUsageResponse:
        for event in request.events:
            if event.org_id not in self.known_orgs:
                await context.abort(
                    grpc.StatusCode.FAILED_PRECONDITION, f"unknown org {event.org_id}"
                )
        self.received.set()
        if self.hold is not None:
            await self.hold.wait()
        self.events.extend(request.events)
        return metering_pb2.RecordUsageResponse(recorded=len(request.events))


@pytest.fixture
async def fake_metering() -> AsyncIterator[tuple[FakeMetering, str]]:
    servicer = FakeMetering()
    server = grpc.aio.server()
    metering_pb2_grpc.add_MeteringServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield servicer, f"127.0.0.1:{port}"
    finally:
        await server.stop(0)


@pytest.fixture
def free_port() -> Iterator[int]:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    yield port


async def eventually(predicate: Callable[[], bool], within_s: float = 10.0) -> None:
    """Waits until `predicate()` holds (state another thread changes), or fails."""
    for _ in range(int(within_s / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not reached in time")
