"""Every service's calls by method and code, and their latency, counted by `GrpcServer`: an
answer counts as OK, an abort under its code, an exception as UNKNOWN; health checks are not
counted. The same families a dashboard reads for embed, metering and sidecar. A server without
other interceptors wraps its handlers at registration, one with them counts through an
interceptor: both are tried."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from intent_embed.grpc_server import GrpcServer, abort
from tests.intent_embed.passing import PASS_THROUGH, Passing

SERVICE = "test.Counted"


async def _ok(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request


async def _refused(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    await abort(context, grpc.StatusCode.RESOURCE_EXHAUSTED, "full")


async def _broken(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError("a bug")


def _register(server: grpc.aio.Server) -> None:
    """As generated code registers a service: a generic handler and the same methods again as
    registered methods (which take precedence)."""
    behaviours = {"Ok": _ok, "Refused": _refused, "Broken": _broken}
    methods = {name: grpc.unary_unary_rpc_method_handler(f) for name, f in behaviours.items()}
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, methods),))
    server.add_registered_method_handlers(SERVICE, methods)


def _handled(registry: CollectorRegistry, method: str, code: str) -> float:
    value = registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_service": SERVICE, "grpc_method": method, "grpc_code": code},
    )
    return value or 0.0


@PASS_THROUGH
async def test_calls_are_counted_by_method_and_code_and_timed(others: list[Passing]) -> None:
    registry = CollectorRegistry()
    server = GrpcServer(SERVICE, _register, "127.0.0.1:0", interceptors=others, registry=registry)
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{server.port}")
    try:
        for _ in range(3):
            assert await channel.unary_unary(f"/{SERVICE}/Ok")(b"x", timeout=5) == b"x"
        for method in ("Refused", "Broken"):
            try:
                await channel.unary_unary(f"/{SERVICE}/{method}")(b"x", timeout=5)
            except grpc.aio.AioRpcError:
                pass
        await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
    finally:
        await channel.close()
        await server.stop(0, quiet_s=0)
    assert _handled(registry, "Ok", "OK") == 3
    assert _handled(registry, "Refused", "RESOURCE_EXHAUSTED") == 1
    assert _handled(registry, "Broken", "UNKNOWN") == 1
    timed = registry.get_sample_value(
        "grpc_server_handling_seconds_count", {"grpc_service": SERVICE, "grpc_method": "Ok"}
    )
    assert timed == 3
    health = registry.get_sample_value(
        "grpc_server_handled_total",
        {"grpc_service": "grpc.health.v1.Health", "grpc_method": "Check", "grpc_code": "OK"},
    )
    assert health is None
    assert all(other.calls == 6 for other in others)  # 5 calls and the health check
