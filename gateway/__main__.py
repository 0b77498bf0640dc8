"""Start-up of the gateway: `python -m gateway` serves the app with uvicorn (uvloop, httptools).

Every setting is a `GATEWAY_*` environment variable and may be overridden by the flag of the
same name; uvicorn drains in-flight requests on SIGTERM, then the lifespan closes the channels.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.settings import Settings


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
        "log_level": settings.log_level.lower(),
        "timeout_graceful_shutdown": settings.graceful_shutdown_s,
        "timeout_keep_alive": 30,
    }
    if settings.workers > 1:
        # Worker processes build their own app from the environment, so pass flags on there.
        for name, value in overrides.items():
            os.environ[f"GATEWAY_{name.upper()}"] = str(value)
        uvicorn.run(
            "gateway.app:create_app_from_env", factory=True, workers=settings.workers, **common
        )
    else:
        uvicorn.run(create_app(settings), **common)
    return 0


if __name__ == "__main__":
    sys.exit(main())
