"""OpenTelemetry traces for every service, configured the SDK's standard way.

`configure_tracing` turns tracing on when the environment asks for it, with the SDK's own
variables: ``OTEL_TRACES_EXPORTER`` (``console`` prints spans to stdout, ``otlp`` sends them
over OTLP/HTTP; several comma-separated), ``OTEL_EXPORTER_OTLP_ENDPOINT`` (alone it means
``otlp``), ``OTEL_SERVICE_NAME`` (default: the service's own name), ``OTEL_TRACES_SAMPLER`` and
its argument, and the batch processor's ``OTEL_BSP_*``. With none of them set tracing is off:
no interceptor is installed, no middleware, and `span` hands out a no-op context, so the hot
path pays nothing.

When on, the maintained instrumentations do the plumbing: grpc's server and client
interceptors (the W3C trace context travels in gRPC metadata), FastAPI's and requests' for the
calls to Stripe. (SQLAlchemy's, 0.66b2, declares sqlalchemy < 2.1 and cannot hook 2.1: the
ledger's work shows as its own `ledger.commit` span.) The services add
spans of their own through `span` (batch, forward, usage record, spool write, ledger commit).
Attributes are sizes, counts and names only: never an API key, a service token, an input text
or a vector.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_enabled = False


def enabled() -> bool:
    return _enabled


def configure_tracing(service_name: str) -> bool:
    """Installs the tracer provider the environment asks for; False (tracing off) when it asks
    for none. Called once by each process's start-up, before its servers are built."""
    global _enabled
    names = [n.strip() for n in os.environ.get("OTEL_TRACES_EXPORTER", "").split(",") if n.strip()]
    endpoint = os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    )
    if not names and endpoint:
        names = ["otlp"]
    if not names or names == ["none"]:
        return False
    from opentelemetry import trace
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter

    attributes = {} if os.environ.get("OTEL_SERVICE_NAME") else {SERVICE_NAME: service_name}
    # The sampler comes from OTEL_TRACES_SAMPLER (default: parent-based, always on).
    provider = TracerProvider(resource=Resource.create(attributes))
    for name in names:
        if name == "console":
            provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
        elif name == "otlp":
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        elif name != "none":
            raise ValueError(f"OTEL_TRACES_EXPORTER: {name!r} is not console, otlp or none")
    trace.set_tracer_provider(provider)
    _enabled = True
    log.info("tracing_on exporters=%s", ",".join(names))
    return True


def server_interceptors() -> list[Any]:
    """grpc.aio server interceptors that continue the caller's trace (none when off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_server_interceptor

    return [aio_server_interceptor()]


def client_interceptors() -> list[Any]:
    """grpc.aio client interceptors that carry the current trace to the server (none when off)."""
    if not _enabled:
        return []
    from opentelemetry.instrumentation.grpc import aio_client_interceptors

    return list(aio_client_interceptors())


def instrument_requests() -> None:
    """Spans for outgoing HTTP through `requests`, which the Stripe SDK uses (nothing when off):
    method, URL and status, never a header, so never the Stripe key."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.requests import RequestsInstrumentor

    RequestsInstrumentor().instrument()


def instrument_app(app: Any) -> None:
    """Traces every request of a FastAPI app (nothing when off)."""
    if not _enabled:
        return
    from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor

    FastAPIInstrumentor.instrument_app(app, excluded_urls="healthz,readyz")


@contextlib.contextmanager
def _span(name: str, attributes: dict[str, Any]) -> Iterator[Any]:
    from opentelemetry import trace

    with trace.get_tracer("intent_embed").start_as_current_span(name, attributes=attributes) as s:
        yield s


def span(name: str, **attributes: Any) -> contextlib.AbstractContextManager[Any]:
    """A child span of the current one, with `attributes` (a no-op context when off)."""
    if not _enabled:
        return contextlib.nullcontext()
    return _span(name, attributes)


def past_span(
    name: str, start_ns: int, end_ns: int, parent: Any = None, **attributes: Any
) -> Any:
    """Records a span that already happened (start and end in wall-clock ns), as a child of
    `parent` or of the current span; returns it, to parent others (None when off)."""
    if not _enabled:
        return None
    from opentelemetry import trace

    context = trace.set_span_in_context(parent) if parent is not None else None
    tracer = trace.get_tracer("intent_embed")
    recorded = tracer.start_span(name, context, attributes=attributes, start_time=start_ns)
    recorded.end(end_time=end_ns)
    return recorded


def current_ids() -> dict[str, str]:
    """The current span's trace and span ids (hex), for log lines; empty when off or outside
    a span."""
    if not _enabled:
        return {}
    from opentelemetry import trace

    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return {}
    return {"trace_id": f"{context.trace_id:032x}", "span_id": f"{context.span_id:016x}"}
