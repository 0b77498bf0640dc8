"""The gRPC server scaffold every service runs: health, reflection, graceful stop, error statuses.

`GrpcServer` registers the standard health service (``""`` and the service's own name) and
reflection next to the service, binds the port (0 picks a free one) and reports NOT_SERVING
until the owner says it is ready; `stop` turns health NOT_SERVING, then keeps the port open
while its `DrainInterceptor` answers new calls UNAVAILABLE (which clients retry elsewhere)
until the calls in flight are done and a short quiet period has passed, and only then stops
grpc, so that no call gets the transport's CANCELLED. `abort` ends a call with a status and
its rich details (the field to fix, a reason clients branch on); `until_signalled` waits for
SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_health.v1.health import aio as health_aio
from grpc_reflection.v1alpha import reflection
from prometheus_client import CollectorRegistry

from intent_embed import tracing
from intent_embed.call_metrics import CallMetrics
from intent_embed.drain import DrainInterceptor
from intent_embed.rich_status import status_with_details

HEALTH_SERVICE = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
_SERVING = health_pb2.HealthCheckResponse.SERVING
_NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# How long a draining server stays reachable after its last call: long enough for callers
# that have not yet seen NOT_SERVING (or the endpoint's removal) to be refused and retry.
QUIET_S = 1.0


class GrpcServer:
    """A grpc.aio server with one service, health and reflection, bound to `address`;
    `interceptors` run in order around every call, health and reflection included, after the
    tracing interceptor (when tracing is on), the drain interceptor and the call metrics;
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
        self.drain = DrainInterceptor(registry)
        counted = [CallMetrics(registry)] if registry is not None else []
        self.server = grpc.aio.server(
            options=list(options),
            interceptors=[*tracing.server_interceptors(), self.drain, *counted, *interceptors],
        )
        register(self.server)
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
