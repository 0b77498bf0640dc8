"""Every server drains the same way: once `GrpcServer.stop` begins, health says NOT_SERVING,
a new call is answered UNAVAILABLE with the reason DRAINING (which clients retry; never
CANCELLED), the calls already in flight finish with their answers, and the port closes once
they are done. Tried on a bare service here, with and without another interceptor (the drain
then runs as one, else inside the handlers); central metering (in-process), the embed service
and the sidecar (as processes) in their own tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from intent_embed.grpc_server import GrpcServer
from intent_embed.rich_status import DRAINING, details_of
from tests.intent_embed.passing import Passing
from tests.support.waiting import eventually

SERVICE = "test.Slow"
METHOD = f"/{SERVICE}/Call"


class Slow:
    """A unary method answering its request back after `delay_s`."""

    def __init__(self) -> None:
        self.delay_s = 0.0
        self.started = 0

    async def call(self, request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        self.started += 1
        await asyncio.sleep(self.delay_s)
        return request

    def register(self, server: grpc.aio.Server) -> None:
        handler = grpc.unary_unary_rpc_method_handler(self.call)
        server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Call": handler}),)
        )


@pytest.fixture(params=["wrapped", "intercepted"])
async def running(
    request: pytest.FixtureRequest,
) -> AsyncIterator[tuple[GrpcServer, Slow, grpc.aio.Channel]]:
    slow = Slow()
    others = [Passing()] if request.param == "intercepted" else []
    server = GrpcServer(
        SERVICE, slow.register, "127.0.0.1:0", interceptors=others, registry=CollectorRegistry()
    )
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    yield server, slow, channel
    await channel.close()
    await server.stop(0, quiet_s=0)


async def _status(channel: grpc.aio.Channel) -> int:
    stub = health_pb2_grpc.HealthStub(channel)
    reply = await stub.Check(health_pb2.HealthCheckRequest(service=SERVICE), timeout=2)
    return int(reply.status)


async def test_a_call_during_the_drain_is_refused_unavailable_and_in_flight_ones_finish(
    running: tuple[GrpcServer, Slow, grpc.aio.Channel],
) -> None:
    server, slow, channel = running
    call = channel.unary_unary(METHOD)
    slow.delay_s = 1.0
    in_flight = asyncio.ensure_future(call(b"first", timeout=10))
    await eventually(lambda: slow.started == 1, within_s=5)

    stopping = asyncio.ensure_future(server.stop(10, quiet_s=0.5))
    await eventually(lambda: server.drain.draining, within_s=5)
    assert await _status(channel) == health_pb2.HealthCheckResponse.NOT_SERVING
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"late", timeout=5)
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert details_of(refused.value).reason == DRAINING
    assert slow.started == 1, "a refused call must never reach the servicer"

    assert await in_flight == b"first"
    await asyncio.wait_for(stopping, timeout=5)
    with pytest.raises(grpc.aio.AioRpcError) as gone:
        await call(b"after", timeout=2)
    assert gone.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_port_stays_open_for_the_quiet_period_then_closes(
    running: tuple[GrpcServer, Slow, grpc.aio.Channel],
) -> None:
    server, _, channel = running
    call = channel.unary_unary(METHOD)
    assert await call(b"warm", timeout=5) == b"warm"
    loop = asyncio.get_running_loop()
    began = loop.time()
    stopping = asyncio.ensure_future(server.stop(10, quiet_s=0.5))
    await eventually(lambda: server.drain.draining, within_s=5)
    # Idle at once, and yet still answering (refusing) for the quiet period.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call(b"late", timeout=5)
    assert details_of(refused.value).reason == DRAINING
    await asyncio.wait_for(stopping, timeout=5)
    assert 0.5 <= loop.time() - began < 3.0


async def test_a_call_still_running_at_the_end_of_the_grace_is_cut_off(
    running: tuple[GrpcServer, Slow, grpc.aio.Channel],
) -> None:
    server, slow, channel = running
    call = channel.unary_unary(METHOD)
    slow.delay_s = 30.0
    in_flight = asyncio.ensure_future(call(b"slow", timeout=60))
    await eventually(lambda: slow.started == 1, within_s=5)
    loop = asyncio.get_running_loop()
    began = loop.time()
    await server.stop(0.5)
    assert loop.time() - began < 3.0, "the grace bounds the whole stop"
    with pytest.raises(grpc.aio.AioRpcError):
        await in_flight

