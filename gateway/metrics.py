"""The gateway's Prometheus metrics, kept in a registry owned by each app instance, and the
server that exposes them on their own port.

A pure ASGI middleware counts every HTTP answer by route (from the app's route table) and
status and times it; the
embeddings handler counts upstream failures by upstream and gRPC code. `serve_metrics` puts
``/metrics`` on ``GATEWAY_METRICS_PORT``, never on the public API port: request and token
counts are business volume, for Prometheus only.
"""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast
from wsgiref.simple_server import WSGIServer, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
)  # fmt: skip


class GatewayMetrics:
    """The metric families of one app."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "gateway_requests_total",
            "HTTP requests answered, by route and status",
            ["route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "gateway_request_seconds",
            "time from request start to the last response byte, by route",
            ["route"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "failed gRPC calls to upstreams, by upstream and gRPC code",
            ["upstream", "code"],
            registry=self.registry,
        )
        self.inflight = Gauge(
            "gateway_inflight_requests", "HTTP requests being answered", registry=self.registry
        )
        self.inputs = Counter(
            "gateway_inputs_total", "inputs embedded successfully", registry=self.registry
        )
        self.tokens = Counter(
            "gateway_tokens_total", "prompt tokens embedded successfully", registry=self.registry
        )
        self.rate_limited = Counter(
            "gateway_ratelimited_total",
            "requests refused with 429 for an org's rate limit, by limit (requests, tokens)",
            ["limit"],
            registry=self.registry,
        )
        self.rate_limit_unavailable = Counter(
            "gateway_ratelimit_unavailable_total",
            "rate-limit checks the store (Redis) failed to answer; the request was served "
            "without a limit (fail open)",
            registry=self.registry,
        )


class MetricsMiddleware:
    """Counts and times every HTTP response by the app's route it matched (its path template,
    such as ``/v2/models/{model}``), read from the app's own route table; any other path counts
    as 'other', so unknown paths never create a time series each."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self._table = routes  # the router's live list: read at the first request, complete then
        self._exact: frozenset[str] | None = None
        self._templated: list[tuple[re.Pattern[str], str]] = []

    def route_of(self, path: str) -> str:
        if self._exact is None:
            paths = [(route, str(getattr(route, "path", ""))) for route in self._table]
            self._exact = frozenset(p for _, p in paths if p and "{" not in p)
            self._templated = [(route.path_regex, p) for route, p in paths
                               if "{" in p and hasattr(route, "path_regex")]  # fmt: skip
        if path in self._exact:
            return path
        for regex, template in self._templated:
            if regex.match(path):
                return template
        return "other"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = self.route_of(scope["path"])
        status = 500
        start = time.monotonic()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        self.metrics.inflight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.inflight.dec()
            self.metrics.requests.labels(route, str(status)).inc()
            self.metrics.latency.labels(route).observe(time.monotonic() - start)


class _SharedPortServer(ThreadingWSGIServer):
    # Several uvicorn worker processes each serve their own registry on the one port (the
    # kernel picks one per connection), as /metrics on the API port did before.
    allow_reuse_port = True


@dataclass
class MetricsServer:
    """A running /metrics server (a daemon thread); `stop` closes its port."""

    server: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def serve_metrics(
    registry: CollectorRegistry, host: str, port: int, *, shared: bool = False
) -> MetricsServer:
    """Serves the registry at ``http://host:port/metrics`` (port 0: a free one); `shared`
    lets other processes bind the same port too (one per uvicorn worker)."""
    base = _SharedPortServer if shared else ThreadingWSGIServer
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # GATEWAY_HOST may be "::"
    server_class = cast(
        type[ThreadingWSGIServer], type("MetricsServer", (base,), {"address_family": family})
    )
    server = make_server(
        host, port, make_wsgi_app(registry), server_class, handler_class=_SilentHandler
    )
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return MetricsServer(server, thread)
