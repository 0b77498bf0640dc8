"""Central metering in memory, as the services meet it over gRPC, and a way to serve fakes.

`FakeMetering` records usage idempotently by event id (a repeat counts as a duplicate, like the
real ledger), refuses orgs it does not know, can hold or slow its answers, and answers
Authenticate from a table of keys. `FakeServer` serves any servicer on the shared scaffold
(health SERVING, reflection) and can be stopped and started again on the same port;
`ThreadedServer` runs one (or any `AsyncServer`, such as the real metering service) on its own
event loop for tests and benchmarks that block.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Generic, Protocol, TypeVar

import grpc

from intent_embed.grpc_server import GrpcServer, abort
from intent_embed.rich_status import UNKNOWN_ORG
from intent_embed.v1 import metering_pb2, metering_pb2_grpc

METERING_SERVICE = "intent_embed.v1.MeteringService"


@dataclass
class FakeMetering(metering_pb2_grpc.MeteringServiceServicer):
    """RecordUsage atomic per call and idempotent by event id; Authenticate from `keys`."""

    known_orgs: set[str] | None = None  # None: every org not in rejected_orgs is known
    rejected_orgs: set[str] = field(default_factory=set)
    events: dict[str, metering_pb2.UsageEvent] = field(default_factory=dict)
    deliveries: int = 0
    delay_s: float = 0.0
    hold: asyncio.Event | None = None  # set: RecordUsage answers; unset: it waits
    received: asyncio.Event = field(default_factory=asyncio.Event)
    keys: dict[str, metering_pb2.AuthenticateResponse] = field(default_factory=dict)
    revoked: set[str] = field(default_factory=set)
    auth_failures: list[tuple[grpc.StatusCode, str]] = field(default_factory=list)
    auth_calls: int = 0

    def tokens(self) -> int:
        return sum(e.tokens for e in self.events.values())

    def _known(self, org_id: str) -> bool:
        if org_id in self.rejected_orgs:
            return False
        return self.known_orgs is None or org_id in self.known_orgs

    async def RecordUsage(
        self, request: metering_pb2.RecordUsageRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.RecordUsageResponse:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        for i, e in enumerate(request.events):
            if not self._known(e.org_id):
                await abort(context, grpc.StatusCode.FAILED_PRECONDITION,
                            f"unknown org {e.org_id}", field=f"events[{i}].org_id",
                            reason=UNKNOWN_ORG)  # fmt: skip
        self.received.set()
        if self.hold is not None:
            await self.hold.wait()
        recorded = duplicates = 0
        for e in request.events:
            self.deliveries += 1
            if e.event_id in self.events:
                duplicates += 1
            else:
                self.events[e.event_id] = e
                recorded += 1
        return metering_pb2.RecordUsageResponse(recorded=recorded, duplicates=duplicates)

    async def Authenticate(
        self, request: metering_pb2.AuthenticateRequest, context: grpc.aio.ServicerContext
    ) -> metering_pb2.AuthenticateResponse:
        self.auth_calls += 1
        if self.auth_failures:
            await abort(context, *self.auth_failures.pop(0))
        if request.api_key in self.revoked:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "revoked")
        reply = self.keys.get(request.api_key)
        if reply is None:
            await abort(context, grpc.StatusCode.UNAUTHENTICATED, "unknown key")
        return reply


class FakeServer:
    """`register`'s servicer on 127.0.0.1:`port` (0: a free one), health SERVING."""

    def __init__(
        self, service_name: str, register: Callable[[grpc.aio.Server], None], port: int = 0
    ) -> None:
        self._service_name = service_name
        self._register = register
        self.port = port
        self._server: GrpcServer | None = None

    @classmethod
    def metering(cls, fake: FakeMetering, port: int = 0) -> FakeServer:
        return cls(
            METERING_SERVICE,
            lambda s: metering_pb2_grpc.add_MeteringServiceServicer_to_server(fake, s),
            port,
        )

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = GrpcServer(self._service_name, self._register, self.address)
        self.port = self._server.port
        await self._server.start()

    async def set_serving(self, serving: bool) -> None:
        assert self._server is not None, "not started"
        await self._server.set_serving(serving)

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(0)
            self._server = None

    async def __aenter__(self) -> FakeServer:
        await self.start()
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()


class AsyncServer(Protocol):
    """A gRPC server started and stopped on an event loop, listening on `port`."""

    port: int

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def set_serving(self, serving: bool) -> None: ...


ServerT = TypeVar("ServerT", bound=AsyncServer)


class ThreadedServer(Generic[ServerT]):
    """A server on an event loop of its own thread: `with ThreadedServer(...) as server:`."""

    def __init__(self, server: ServerT) -> None:
        self.server = server
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    @property
    def port(self) -> int:
        return self.server.port

    def set_serving(self, serving: bool) -> None:
        asyncio.run_coroutine_threadsafe(self.server.set_serving(serving), self.loop).result(30)

    def __enter__(self) -> ThreadedServer[ServerT]:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.server.start(), self.loop).result(30)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self.server.stop(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)
        self.loop.close()
