"""The gRPC server scaffold every service runs: health, reflection, graceful stop, error statuses.

`GrpcServer` registers the standard health service (``""`` and the service's own name) and
reflection next to the service, binds the port (0 picks a free one) and reports NOT_SERVING
until the owner says it is ready; `stop` turns health NOT_SERVING, then keeps the port open
while its `Drain` answers new calls UNAVAILABLE (which clients retry elsewhere)
until the calls in flight are done and a short quiet period has passed, and only then stops
grpc, so that no call gets the transport's CANCELLED. `abort` ends a call with a status and
its rich details (the field to fix, a reason clients branch on); `until_signalled` waits for
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NoReturn, cast

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from intent_embed import tracing
from intent_embed.call_metrics import CallMetrics
from intent_embed.drain import Drain
from intent_embed.rich_status import status_with_details
from intent_embed.server_calls import is_probe, wrapped_unary

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# How long a draining server stays reachable after its last call: long enough for callers
# that have not yet seen NOT_SERVING (or the endpoint's removal) to be refused and retry.
QUIET_S = 1.0


class GrpcServer:
    """A grpc.aio server with one service, health and reflection, bound to `address`;
    `interceptors` run in order around every call, health and reflection included, after the
    tracing interceptor (when tracing is on) and the call interceptor (drain, call metrics);
    `registry` gets the drain's in-flight gauge and refused-while-draining counter and the
    calls by method and code (`intent_embed.call_metrics`)."""

    def __init__(
        self,
        service_name: str,
        register: Callable[[grpc.aio.Server], None],
        address: str,
        options: Sequence[tuple[str, Any]] = (),
        interceptors: Sequence[grpc.aio.ServerInterceptor] = (),
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.service_name = service_name
        self.drain = Drain(registry)
        # Without a registry the calls are counted where nobody reads them: one code path.
        counted = registry if registry is not None else CollectorRegistry()
        calls = _Calls(self.drain, CallMetrics(counted))
        traced = tracing.server_interceptors()
        if traced or interceptors:
            self.server = grpc.aio.server(
                options=list(options), interceptors=[*traced, calls, *interceptors]
            )
            register(self.server)
        else:
            # No interceptor at all: grpc.aio then finds handlers without its interceptor
            # pipeline, which costs more per call than what the drain and the metrics do
            # (docs/performance.md); so they are wrapped into the handlers once, here.
            self.server = grpc.aio.server(options=list(options))
            register(cast(grpc.aio.Server, _WrappingRegistrar(self.server, calls)))
        self.health = health_aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            (service_name, HEALTH_SERVICE, reflection.SERVICE_NAME), self.server
        )
        self.port = self.server.add_insecure_port(address)
        if self.port == 0:
            raise RuntimeError(f"cannot bind {address}")

    async def start(self, *, serving: bool = True) -> None:
        """Listens; health says SERVING now, or (`serving=False`) once `set_serving` is called."""
        await self._set_health(_NOT_SERVING)
        await self.server.start()
        if serving:
            await self.set_serving()

    async def set_serving(self, serving: bool = True) -> None:
        """Health SERVING (or NOT_SERVING) for both names."""
        await self._set_health(_SERVING if serving else _NOT_SERVING)

    async def stop(self, grace: float, *, quiet_s: float = QUIET_S) -> None:
        """Health NOT_SERVING for good and new calls refused UNAVAILABLE; the calls in flight
        get `grace` seconds to finish, then the port stays open `quiet_s` more (within `grace`)
        and grpc stops, cancelling whatever is still running."""
        await self.health.enter_graceful_shutdown()
        self.drain.start_draining()
        deadline = time.monotonic() + grace
        try:
            await asyncio.wait_for(self.drain.idle(), timeout=grace)
        except TimeoutError:
            pass
        await asyncio.sleep(min(quiet_s, max(0.0, deadline - time.monotonic())))
        await self.server.stop(max(0.0, deadline - time.monotonic()))

    async def _set_health(self, status: health_pb2.HealthCheckResponse.ServingStatus) -> None:
        for name in ("", self.service_name):
            await self.health.set(name, status)


class _Calls(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """The drain and the call metrics around each unary method of the service: one coroutine
    per method (`CallMetrics.wrap`), built the first time
    and reused while the same handler comes back. Health and reflection pass untouched. Runs
    as an interceptor when the server has others (it then sees what they return: a call that
    the service-token check refuses is counted too), else wraps the handlers at registration
    (`_WrappingRegistrar`)."""

    def __init__(self, drain: Drain, metrics: CallMetrics) -> None:
        self.drain = drain
        self.metrics = metrics
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    def handler_for(self, method: str, handler: Any) -> Any:
        if handler is None or handler.unary_unary is None or is_probe(method):
            return handler  # no streaming method in this project's services; left uncounted
        known = self._wrapped.get(method)
        if known is not None and known[0] is handler:
            return known[1]
        behaviour = self.metrics.wrap(handler.unary_unary, method, self.drain)
        wrapped = wrapped_unary(handler, behaviour)
        # One entry per method: a handler made per call (a refusal) replaces it, never adds.
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        return self.handler_for(details.method, await continuation(details))


class _WrappingRegistrar:
    """What a service's ``add_..._to_server`` registers on: the server, with every handler
    passed through `_Calls` on the way in."""

    def __init__(self, server: grpc.aio.Server, calls: _Calls) -> None:
        self._server = server
        self._calls = calls

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self._server.add_generic_rpc_handlers([_WrappedGeneric(h, self._calls) for h in handlers])

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        wrap = self._calls.handler_for
        self._server.add_registered_method_handlers(
            service, {name: wrap(f"/{service}/{name}", h) for name, h in handlers.items()}
        )

    def __getattr__(self, name: str) -> Any:
        return getattr(self._server, name)


class _WrappedGeneric(grpc.GenericRpcHandler):  # type: ignore[misc]
    def __init__(self, inner: grpc.GenericRpcHandler, calls: _Calls) -> None:
        self._inner = inner
        self._calls = calls

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        return self._calls.handler_for(details.method, self._inner.service(details))


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    field: str = "",
    reason: str = "",
) -> NoReturn:
    """Ends the call with `code` and `message`; `field` names the request field to fix and
    `reason` says why in a word clients may branch on (:mod:`intent_embed.rich_status`)."""
    await context.abort_with_status(status_with_details(code, message, field=field, reason=reason))
    raise AssertionError("abort_with_status always raises")


async def until_signalled(
    signals: Sequence[signal.Signals] = (signal.SIGTERM, signal.SIGINT),
) -> None:
    """Returns when the process gets one of `signals` (the start of a graceful stop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in signals:
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
