"""The admin CLI (``python -m metering admin ...``): orgs, Stripe customers, projects, API keys,
usage and charges, and a billing run on demand.

Every subcommand takes ``--json`` for machine-readable output (the dev stack's ``make run``
uses ``ensure-demo --json``). Errors go to stderr with exit status 2 and write nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.exc import OperationalError, ProgrammingError

from metering.database import make_engine
from metering.ledger import Ledger, LedgerError, charge_as_dict, org_as_dict
from metering.settings import Settings


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m metering admin",
        description="Administer the metering ledger at METERING_DATABASE_URL.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--json", action="store_true", help="print JSON")
        return p

    p = add("create-org", "create an org; prints its id")
    p.add_argument("--name", required=True)
    p.add_argument("--stripe-customer", default=None, help="Stripe customer id (cus_...)")
    add("orgs", "list orgs")
    p = add("attach-stripe", "attach a Stripe customer (payment method) to an org")
    p.add_argument("--org", required=True)
    p.add_argument("--customer", required=True, help="Stripe customer id (cus_...)")
    p = add("create-project", "create a project in an org; prints its id")
    p.add_argument("--org", required=True)
    p.add_argument("--name", required=True)
    p = add("projects", "list an org's projects")
    p.add_argument("--org", required=True)
    p = add("create-key", "create an API key; prints it ONCE (only its hash is stored)")
    p.add_argument("--org", required=True)
    p.add_argument("--name", default="")
    p = add("revoke-key", "revoke an API key by its id (ie_...)")
    p.add_argument("--key", required=True, dest="key_id", help="key id, e.g. ie_0123456789ab")
    p = add("list-keys", "list an org's API keys (ids only)")
    p.add_argument("--org", required=True)
    p = add("usage", "usage: tokens, requests, dollars owed and charged, per project and day")
    p.add_argument("--org", required=True)
    p.add_argument("--project", default="")
    p.add_argument("--since", default=None, help="UTC date YYYY-MM-DD")
    p = add("charges", "list an org's charges")
    p.add_argument("--org", required=True)
    add("bill-now", "run the billing worker once (create and send due charges)")
    p = add("ensure-demo", "create or reuse the demo org, project and API key")
    p.add_argument(
        "--key-file",
        type=Path,
        default=None,
        help="where the plaintext demo key is kept between runs",
    )
    return parser


def _since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise LedgerError(f"--since {value!r} is not a date: use YYYY-MM-DD") from None


def _text(command: str, result: Any) -> str:
    if command == "create-key":
        return (
            f"{result['api_key']}\n(key id {result['key_id']}; this is the only time the "
            "key is shown)"
        )
    if command in ("create-org",):
        return str(result["org_id"])
    if command == "create-project":
        return str(result["project_id"])
    if command == "usage":
        lines = [
            f"org {result['org_id']} ({result['org_name']}): {result['total_tokens']} tokens, "
            f"{result['total_requests']} requests",
            f"owed ${result['owed_dollars']}, charged ${result['charged_dollars']}, pending "
            f"${result['pending_dollars']}, billing {result['billing_state']}"
            + (f" ({result['billing_message']})" if result["billing_message"] else ""),
        ]
        for project, agg in result["per_project"].items():
            lines.append(
                f"  project {project or '(none)'}: {agg['tokens']} tokens, "
                f"{agg['requests']} requests"
            )
        for b in result["per_day"]:
            lines.append(
                f"  {b['day']} {b['project_id'] or '(none)'}: {b['tokens']} tokens, "
                f"{b['requests']} requests"
            )
        return "\n".join(lines)
    if isinstance(result, list):
        return "\n".join(" ".join(f"{k}={v}" for k, v in row.items()) for row in result) or "(none)"
    return " ".join(f"{k}={v}" for k, v in result.items())


def run_command(args: argparse.Namespace, settings: Settings) -> Any:
    engine = make_engine(settings.database_url, pool_size=1)
    ledger = Ledger(engine, max_unpaid_usd=settings.max_unpaid_usd)
    try:
        handlers: dict[str, Callable[[], Any]] = {
            "create-org": lambda: org_as_dict(ledger.create_org(args.name, args.stripe_customer)),
            "orgs": lambda: [org_as_dict(o) for o in ledger.list_orgs()],
            "attach-stripe": lambda: org_as_dict(ledger.attach_stripe(args.org, args.customer)),
            "create-project": lambda: _project(ledger.create_project(args.org, args.name)),
            "projects": lambda: [_project(p) for p in ledger.list_projects(args.org)],
            "create-key": lambda: _new_key(*ledger.create_key(args.org, args.name)),
            "revoke-key": lambda: _key(ledger.revoke_key(args.key_id)),
            "list-keys": lambda: [_key(k) for k in ledger.list_keys(args.org)],
            "usage": lambda: ledger.usage(args.org, args.project, _since(args.since)).as_dict(),
            "charges": lambda: [charge_as_dict(c) for c in ledger.list_charges(args.org)],
            "bill-now": lambda: _bill_now(engine, settings),
            "ensure-demo": lambda: ledger.ensure_demo(args.key_file),
        }
        return handlers[args.command]()
    finally:
        engine.dispose()


def _bill_now(engine: Any, settings: Settings) -> Any:
    # Imported here: the stripe SDK is slow to import and only this command needs it.
    from metering.billing import BillingWorker, config_from

    return BillingWorker(engine, config_from(settings)).run_once().as_dict()


def _project(p: Any) -> dict[str, Any]:
    return {
        "project_id": p.id,
        "org_id": p.org_id,
        "name": p.name,
        "created_at": p.created_at.isoformat(),
    }


def _key(k: Any) -> dict[str, Any]:
    return {
        "key_id": k.id,
        "org_id": k.org_id,
        "name": k.name,
        "created_at": k.created_at.isoformat(),
        "revoked_at": k.revoked_at.isoformat() if k.revoked_at else "",
        "revoked": k.revoked_at is not None,
    }


def _new_key(row: Any, plaintext: str) -> dict[str, Any]:
    return {**_key(row), "api_key": plaintext}


def main(argv: list[str], settings: Settings) -> int:
    args = _parser().parse_args(argv)
    try:
        result = run_command(args, settings)
    except LedgerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except (OperationalError, ProgrammingError) as exc:
        print(
            f"error: the ledger at METERING_DATABASE_URL cannot be used ({type(exc.orig).__name__}:"
            f" {str(exc.orig).strip()}); create or update its schema with "
            "`python -m metering migrate`",
            file=sys.stderr,
        )
        return 2
    if args.json:
        print(json.dumps(result, indent=2, sort_keys=True))
    else:
        print(_text(args.command, result))
    return 0
