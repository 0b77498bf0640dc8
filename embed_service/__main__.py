"""Start-up of `python -m embed_service`: settings, logging, model, metrics, server, signals.

SIGTERM / SIGINT drain: health turns NOT_SERVING, new calls are refused, in-flight calls get
`EMBED_SHUTDOWN_GRACE_S` to finish, then the process exits 0.

OpenMP's wait policy is left to libgomp (spin briefly, then sleep): PASSIVE makes every
parallel region of a forward pass wake its workers through the kernel, which is slow; an
operator's OMP_WAIT_POLICY / GOMP_SPINCOUNT always apply (measurements: docs/performance.md).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import sys

from embed_service.settings import Settings
from intent_embed.logs import configure_logging
from intent_embed.settings_cli import parse_settings
from intent_embed.tracing import configure_tracing

log = logging.getLogger("embed_service")


def parse_args(argv: list[str] | None) -> Settings:
    return parse_settings(
        Settings,
        argv,
        prog="python -m embed_service",
        description="gRPC embedding service (intent_embed.v1.EmbedService). Every setting is "
        "read from its environment variable; a command-line flag overrides it.",
    )


async def serve(settings: Settings) -> None:
    from prometheus_client import start_http_server

    from embed_service.metrics import EmbedMetrics
    from embed_service.model import EmbeddingModel, load_on_own_thread
    from embed_service.server import EmbedServer
    from embed_service.usage import MeteringUsageSink, NullUsageSink, UsageSink
    from intent_embed.grpc_server import until_signalled

    metrics = EmbedMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    usage_sink: UsageSink
    if settings.metering_addr:
        if not settings.metering_token:
            log.warning("metering_token_empty reason=EMBED_METERING_TOKEN is empty, metering "
                        "refuses usage records unless it runs without service tokens")  # fmt: skip
        usage_sink = MeteringUsageSink(
            settings.metering_addr, settings.metering_timeout_s, metrics=metrics,
            token=settings.metering_token,
        )
    else:
        log.warning("metering_off reason=EMBED_METERING_ADDR_empty usage_not_recorded=true")
        usage_sink = NullUsageSink()
    model = await load_on_own_thread(
        functools.partial(
            EmbeddingModel.from_directory,
            settings.resolved_model_path(),
            device=settings.device,
            dtype=settings.dtype,
            num_threads=settings.num_threads or (os.cpu_count() or 1),
            unpadded=settings.unpadded,
            backend=settings.backend,
        )
    )
    server = EmbedServer(model, usage_sink, settings, metrics)
    await server.start()
    log.info(
        "embed_service_ready host=%s port=%d metrics_port=%d model=%s device=%s dtype=%s "
        "backend=%s",
        settings.host, server.port, settings.metrics_port, settings.model_name,
        model.device, model.dtype_name, model.backend,
    )  # fmt: skip
    await until_signalled()
    log.info("shutdown_begin grace_s=%.1f", settings.shutdown_grace_s)
    await server.stop()
    log.info("shutdown_done")


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    configure_logging(settings.log_level, settings.log_format)
    configure_tracing("embed")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
