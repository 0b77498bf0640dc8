"""Refusing calls while a server drains: what `GrpcServer` checks first on every call.

It counts the service's calls in flight and, once the server is draining, has every new call
answered `UNAVAILABLE` with the reason ``DRAINING`` before the servicer sees it. Clients retry
UNAVAILABLE (the channels' retryPolicy, the sidecar's forwarder), never CANCELLED, which is what
grpc answers a call that races its own shutdown; so the server keeps its port open, refusing,
until the counted calls are done. Health checks and reflection pass untouched and uncounted:
a draining server must still say NOT_SERVING to whoever asks.
"""

from __future__ import annotations

import asyncio
from typing import NoReturn

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge

from intent_embed.rich_status import DRAINING, status_with_details

DRAINING_MESSAGE = "this server is shutting down; retry the call"
_DRAINING = status_with_details(grpc.StatusCode.UNAVAILABLE, DRAINING_MESSAGE, reason=DRAINING)


class Drain:
    """Counts unary calls in flight; after `start_draining`, new ones are refused UNAVAILABLE.
    `CallMetrics.wrap` applies both to a method, in the coroutine that counts it."""

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

    async def refuse(self, context: grpc.aio.ServicerContext) -> NoReturn:
        """Ends a call that arrived while draining: UNAVAILABLE, reason DRAINING, counted."""
        if self._refused is not None:
            self._refused.inc()
        await context.abort_with_status(_DRAINING)
        raise AssertionError("abort_with_status always raises")

    def enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()
        if self._gauge is not None:
            self._gauge.inc()

    def leave(self) -> None:
        self.in_flight -= 1
        if self.in_flight == 0:
            self._idle.set()
        if self._gauge is not None:
            self._gauge.dec()
