"""Start-up of ``python -m metering``: one command tree, ``serve`` (the default), ``migrate``,
``billing``, ``admin ...`` and ``sidecar``.

Only argument parsing, settings and logging set-up live here; the wiring is in
:mod:`metering.server` and :mod:`metering.sidecar.app`, the work in the modules they call.
Every setting is a ``METERING_*`` environment variable and, under each command, a flag.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time
from typing import TYPE_CHECKING, Any

from pydantic_settings import CliSettingsSource

from intent_embed import tracing
from intent_embed.logs import configure_logging
from intent_embed.settings_cli import add_settings_options, settings_from
from intent_embed.tracing import configure_tracing
from metering.settings import Settings
from metering.sidecar.settings import SidecarSettings

if TYPE_CHECKING:
    from metering.billing import BillingWorker

log = logging.getLogger("metering")

_COMMANDS = {
    "serve": "the central metering gRPC service with its billing loop (the default command)",
    "migrate": "bring the ledger schema at METERING_DATABASE_URL up to date, then exit",
    "billing": "the billing worker alone: a billing run every METERING_BILL_INTERVAL_S",
    "admin": "administer orgs, Stripe customers, projects, API keys, usage and charges",
    "sidecar": "the per-pod sidecar: spool usage on localhost, forward it to central metering",
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, CliSettingsSource[Any]]]:
    """The command tree, and for each command the settings source its flags feed."""
    from metering import admin

    root = argparse.ArgumentParser(
        prog="python -m metering",
        description="intent-embed metering: usage ledger gRPC service, billing worker, admin "
        "CLI and the per-pod sidecar. `python -m metering COMMAND --help` lists the settings "
        "of a command.",
    )
    sub = root.add_subparsers(dest="command", metavar="COMMAND")
    sources: dict[str, CliSettingsSource[Any]] = {}
    for name, help_text in _COMMANDS.items():
        parser = sub.add_parser(name, help=help_text, description=help_text)
        settings_cls = SidecarSettings if name == "sidecar" else Settings
        sources[name] = add_settings_options(parser, settings_cls)
        if name == "billing":
            parser.add_argument("--once", action="store_true", help="one run, then exit")
        if name == "admin":
            admin.add_commands(parser)
    return root, sources


def main(argv: list[str]) -> int:
    parser, sources = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["serve"])
    command = args.command
    if command == "sidecar":
        from metering.sidecar import app

        sidecar_settings = settings_from(SidecarSettings, sources[command], args)
        configure_logging(sidecar_settings.log_level, sidecar_settings.log_format)
        configure_tracing("metering-sidecar")
        return app.run(sidecar_settings)
    settings = settings_from(Settings, sources[command], args)
    if command == "admin":
        from metering import admin

        configure_logging("WARNING")
        return admin.run(args, settings)
    configure_logging(settings.log_level, settings.log_format)
    if command in ("serve", "billing"):
        configure_tracing("metering")
    return _run_central(command, settings, once=bool(getattr(args, "once", False)))


def _run_central(command: str, settings: Settings, *, once: bool) -> int:
    from metering.database import make_engine, migrate

    if command == "migrate":
        migrate(settings.database_url)
        return 0
    if settings.migrate_on_start:
        migrate(settings.database_url)
    from metering.billing import BillingWorker, config_from

    engine = make_engine(settings.database_url)
    tracing.instrument_requests()
    billing = BillingWorker(engine, config_from(settings))
    if not settings.stripe_api_key:
        log.warning(
            "event=stripe_off reason=METERING_STRIPE_API_KEY is empty, charges are "
            "computed and stay pending"
        )
    elif not settings.stripe_webhook_secret:
        log.warning(
            "event=stripe_webhooks_off reason=METERING_STRIPE_WEBHOOK_SECRET is empty, "
            "self-service billing (payment-method setup, Stripe webhooks) is off"
        )
    if command == "billing":
        return _billing(billing, settings, once=once)
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
