"""Start-up of ``python -m metering``: the central service (default), ``migrate``,
``billing`` (the billing worker alone), ``admin ...`` and ``sidecar ...``.

Only argument parsing, settings and logging set-up live here; the wiring is in
:mod:`metering.server`, the work in :mod:`metering.ledger` and :mod:`metering.billing`.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import logging
import sys
import time
from typing import TYPE_CHECKING

from metering.settings import Settings

if TYPE_CHECKING:
    from metering.billing import BillingWorker

log = logging.getLogger("metering")

COMMANDS = ("serve", "migrate", "billing", "admin", "sidecar")


def _help_epilog() -> str:
    lines = ["settings (environment variable, default):"]
    for name, info in Settings.model_fields.items():
        env = f"METERING_{name.upper()}"
        lines.append(f"  {env:<30} {info.default!r:<28} {info.description or ''}")
    lines.append("")
    lines.append(
        "commands: serve (default), migrate, billing [--once], admin ... (see "
        "`admin --help`), sidecar ... (see `sidecar --help`)"
    )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metering",
        description="intent-embed metering: usage ledger gRPC service, billing worker, admin.",
        epilog=_help_epilog(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("command", nargs="?", default="serve", choices=COMMANDS[:3])
    parser.add_argument("--once", action="store_true", help="billing: one run, then exit")
    return parser


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    # The SQLAlchemy URL may carry a password; never log it, and keep library noise down.
    logging.getLogger("stripe").setLevel(logging.WARNING)
    logging.getLogger("alembic.runtime.plugins").setLevel(logging.WARNING)


def main(argv: list[str]) -> int:
    if argv and argv[0] == "sidecar":
        if importlib.util.find_spec("metering.sidecar") is None:
            print("error: this build has no metering sidecar", file=sys.stderr)
            return 2
        from metering import sidecar

        return int(sidecar.main(argv[1:]))
    # Every field comes from the environment (METERING_*); nothing is passed in code.
    from_env: dict[str, object] = {}
    settings = Settings(**from_env)  # type: ignore[arg-type]
    if argv and argv[0] == "admin":
        from metering import admin

        logging.basicConfig(level=logging.WARNING)
        return admin.main(argv[1:], settings)
    args = _parser().parse_args(argv)
    _logging(settings)
    from metering.database import make_engine, migrate

    if args.command == "migrate":
        migrate(settings.database_url)
        return 0
    if settings.migrate_on_start:
        migrate(settings.database_url)
    from metering.billing import BillingWorker, config_from

    engine = make_engine(settings.database_url)
    billing = BillingWorker(engine, config_from(settings))
    if not settings.stripe_api_key:
        log.warning(
            "event=stripe_off reason=METERING_STRIPE_API_KEY is empty, charges are "
            "computed and stay pending"
        )
    if args.command == "billing":
        return _billing(billing, settings, once=args.once)
    from metering.ledger import Ledger
    from metering.server import serve

    ledger = Ledger(engine, max_unpaid_usd=settings.max_unpaid_usd)
    try:
        return asyncio.run(serve(settings, ledger, billing_run=billing.run_once))
    finally:
        engine.dispose()


def _billing(worker: BillingWorker, settings: Settings, *, once: bool) -> int:
    while True:
        worker.run_once()
        if once or settings.bill_interval_s <= 0:
            return 0
        time.sleep(settings.bill_interval_s)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
