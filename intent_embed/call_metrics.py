"""Calls and their latency by method and status, for every gRPC service alike: counted around
each method by `GrpcServer` (into its Prometheus registry, or a private one without it).

``grpc_server_handled_total{grpc_service, grpc_method, grpc_code}`` counts answered calls and
``grpc_server_handling_seconds{grpc_service, grpc_method}`` times them, under the names the
common gRPC Prometheus interceptors use, so existing dashboards read them. Health checks and
reflection are left out. A call the servicer aborts counts under the code it aborted with; one
that raises counts as UNKNOWN, one the client cancels as CANCELLED.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

from intent_embed.drain import Drain
from intent_embed.server_calls import UnaryBehaviour

_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class CallMetrics:
    """Counts and times every unary call of the service by method and status code."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "grpc_server_handled",
            "gRPC calls answered, by service, method and status code",
            ["grpc_service", "grpc_method", "grpc_code"],
            registry=registry,
        )
        self.seconds = Histogram(
            "grpc_server_handling_seconds",
            "time from a call's arrival to its answer, by service and method",
            ["grpc_service", "grpc_method"],
            buckets=_BUCKETS,
            registry=registry,
        )

    def wrap(self, inner: UnaryBehaviour, method: str, drain: Drain) -> UnaryBehaviour:
        """`inner` (the unary method `method`, ``/package.Service/Method``) counted by code and
        timed, and under `drain` (refused while draining, counted in flight) in the same
        coroutine, so a call pays for one layer, not two."""
        service, _, name = method.lstrip("/").rpartition("/")
        timer = self.seconds.labels(service, name)
        handled = self.handled

        async def behaviour(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            code = grpc.StatusCode.UNKNOWN
            entered = False
            try:
                if drain.draining:
                    await drain.refuse(context)
                drain.enter()
                entered = True
                reply = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return reply
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            finally:
                if entered:
                    drain.leave()
                handled.labels(service, name, code.name).inc()
                timer.observe(time.perf_counter() - started)

        return behaviour
