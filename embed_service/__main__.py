"""Start-up of `python -m embed_service`: settings, logging, model, metrics, server, signals.

SIGTERM / SIGINT drain: health turns NOT_SERVING, new calls are refused, in-flight calls get
`EMBED_SHUTDOWN_GRACE_S` to finish, then the process exits 0.

OpenMP's wait policy is left to libgomp (spin briefly, then sleep), on purpose: an earlier
OMP_WAIT_POLICY=PASSIVE default made every parallel region of a forward pass wake its workers
through the kernel; on a 2-core VM that doubled a batch-1 forward (9.5 -> 20 ms) and cut C=64
throughput by a third. OMP_WAIT_POLICY=ACTIVE is an operator's choice for a CPU pod that serves
steadily: in paired runs there it cut the batch-1 forward by 1-3 ms and added ~10% at C=64, but a
worker then spins a whole core for about five minutes after the last request (a bounded
GOMP_SPINCOUNT lost the gain). An operator's OMP_WAIT_POLICY / GOMP_SPINCOUNT always apply.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import os
import signal
import sys

from embed_service.settings import Settings

log = logging.getLogger("embed_service")

def parse_args(argv: list[str]) -> Settings:
    fields = Settings.model_fields
    parser = argparse.ArgumentParser(
        prog="python -m embed_service",
        description="gRPC embedding service (intent_embed.v1.EmbedService). Every setting is "
        "read from its environment variable; a command-line flag overrides it.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, info in fields.items():
        env = f"EMBED_{name.upper()}"
        default = info.default if info.default != "" else '""'
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=env,
            help=f"{info.description} [env {env}, default {default}]",
        )
    args = parser.parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    return Settings(**overrides)


async def serve(settings: Settings) -> None:
    from prometheus_client import start_http_server

    from embed_service.metrics import EmbedMetrics
    from embed_service.model import EmbeddingModel, load_on_own_thread
    from embed_service.server import build_server
    from embed_service.usage import MeteringUsageSink, NullUsageSink, UsageSink

    metrics = EmbedMetrics()
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=settings.host, registry=metrics.registry)
    usage_sink: UsageSink
    if settings.metering_addr:
        usage_sink = MeteringUsageSink(settings.metering_addr, settings.metering_timeout_s)
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
            packed=settings.unpadded,
        )
    )
    server = build_server(model, usage_sink, settings, metrics)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await server.start()
    log.info(
        "embed_service_ready host=%s port=%d metrics_port=%d model=%s device=%s dtype=%s",
        settings.host, server.port, settings.metrics_port, settings.model_name,
        model.device, model.dtype_name,
    )
    await stop.wait()
    log.info("shutdown_begin grace_s=%.1f", settings.shutdown_grace_s)
    await server.stop()
    log.info("shutdown_done")


def main(argv: list[str] | None = None) -> int:
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
