"""Start-up of the gateway: `python -m gateway` serves the app with uvicorn (uvloop, httptools).

Every setting is a `GATEWAY_*` environment variable and may be overridden by the flag of the
same name; uvicorn drains in-flight requests on SIGTERM, then the lifespan closes the channels.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings

_EXIT_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m gateway",
        description="OpenAI-compatible REST gateway of intent-embed. Flags override env vars.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for name, field in Settings.model_fields.items():
        env = f"GATEWAY_{name.upper()}"
        parser.add_argument(
            f"--{name.replace('_', '-')}",
            dest=name,
            default=None,
            metavar=env,
            help=f"{field.description} (env {env}, default {field.default!r})",
        )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if v is not None}
    settings = Settings(**overrides)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )
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
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "timeout_keep_alive": settings.keep_alive_s,
    }
    if settings.workers > 1:
        # Worker processes build their own app from the environment, so pass flags on there.
        for name, value in overrides.items():
            os.environ[f"GATEWAY_{name.upper()}"] = str(value)
        uvicorn.run(
            "gateway.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    else:
        config = uvicorn.Config(create_app(settings), **common)
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
