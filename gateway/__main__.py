"""Start-up of the gateway: `python -m gateway` serves the app with uvicorn (uvloop, httptools).

Every setting is a `GATEWAY_*` environment variable and may be overridden by the flag of the
same name (`--help` lists them); Prometheus' /metrics is served on `GATEWAY_METRICS_PORT`,
apart from the API; uvicorn drains in-flight requests on SIGTERM, then the lifespan
closes the channels.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.metrics import serve_metrics
from gateway.settings import Settings
from intent_embed.logs import configure_logging
from intent_embed.settings_cli import parse_settings
from intent_embed.tracing import configure_tracing

_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    settings = parse_settings(
        Settings,
        argv,
        prog="python -m gateway",
        description="OpenAI-compatible REST gateway of intent-embed. Flags override env vars.",
    )
    configure_logging(settings.log_level, settings.log_format)
    if settings.workers <= 1:
        configure_tracing("gateway")  # worker processes configure their own
    common: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "loop": "uvloop",
        "http": "httptools",
        "lifespan": "on",
        "access_log": False,
        # Client addresses are never used (not logged, not limited on), so skip parsing
        # X-Forwarded-For on every request.
        "proxy_headers": False,
        # uvicorn's own loggers go through the root handler: one log format.
        "log_config": None,
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "timeout_keep_alive": settings.keep_alive_s,
    }
    if settings.workers > 1:
        # Worker processes build their own app from the environment, so pass settings there.
        for name, value in settings.model_dump().items():
            os.environ[f"GATEWAY_{name.upper()}"] = str(value)
        uvicorn.run(
            "gateway.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    else:
        app = create_app(settings)
        if settings.metrics_port:
            serve_metrics(app.state.metrics.registry, settings.host, settings.metrics_port)
        config = uvicorn.Config(app, **common)
        _CleanExitServer(config).run()
    return 0


class _CleanExitServer(uvicorn.Server):
    """uvicorn's server, but a drained SIGTERM/SIGINT ends the process with status 0.

    uvicorn re-raises the captured signal after its graceful shutdown, so the process dies
    "by signal 15"; supervisors (devstack, Kubernetes logs) would read that as a crash.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = {sig: signal.signal(sig, self.handle_exit) for sig in _EXIT_SIGNALS}
        try:
            yield
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)


if __name__ == "__main__":
    sys.exit(main())
