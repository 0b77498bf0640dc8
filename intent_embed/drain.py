"""Refusing calls while a server drains: the interceptor every `GrpcServer` runs first.

It counts the service's calls in flight and, once the server is draining, answers every new
call `UNAVAILABLE` with the reason ``DRAINING`` before the servicer sees it. Clients retry
UNAVAILABLE (the channels' retryPolicy, the sidecar's forwarder), never CANCELLED, which is what
grpc answers a call that races its own shutdown; so the server keeps its port open, refusing,
until the counted calls are done. Health checks and reflection pass untouched and uncounted:
a draining server must still say NOT_SERVING to whoever asks.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from intent_embed.rich_status import DRAINING, status_with_details
from intent_embed.server_calls import is_probe, refusal, wrapped_unary

DRAINING_MESSAGE = "this server is shutting down; retry the call"
_DRAINING = status_with_details(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE, reason=DRAINING)


class DrainInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts unary calls in flight; after `start_draining`, refuses new ones UNAVAILABLE."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.draining = False
        self.in_flight = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._gauge: Gauge | None = None
        self._refused: Counter | None = None
        if registry is not None:
            self._gauge = Gauge(
                "grpc_calls_in_flight", "gRPC calls of the service being answered",
                registry=registry,
            )  # fmt: skip
            self._refused = Counter(
                "grpc_calls_refused_draining",
                "gRPC calls answered UNAVAILABLE because the server was shutting down",
                registry=registry,
            )

    def start_draining(self) -> None:
        self.draining = True

    async def idle(self) -> None:
        """Returns once no counted call is in flight."""
        await self._idle.wait()

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or is_probe(details.method):
            return handler
        if handler.unary_unary is None:
            return handler  # no streaming method in this project's services; left uncounted
        if self.draining:
            return refusal(_DRAINING, self._count_refused)
        inner = handler.unary_unary

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            self._enter()
            try:
                return await inner(request, context)
            finally:
                self._leave()

        return wrapped_unary(handler, behaviour)

    def _count_refused(self) -> None:
        if self._refused is not None:
            self._refused.inc()

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()
        if self._gauge is not None:
            self._gauge.inc()

    def _leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        if self._gauge is not None:
            self._gauge.dec()
