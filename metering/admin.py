"""The admin CLI (``python -m metering admin ...``): orgs, Stripe customers, projects, API keys,
usage and charges, and a billing run on demand, with their text and JSON output.

Every subcommand takes ``--json`` for machine-readable output. Errors go to stderr with exit
status 2 and write nothing.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import OperationalError, ProgrammingError

from metering.database import make_engine
from metering.errors import LedgerError
from metering.ledger import Ledger
from metering.models import Charge, Org
from metering.reports import UsageReport
from metering.settings import Settings
from metering.standing import state_of

_COMMANDS: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]] = [
    ("create-org", "create an org; prints its id", [
        ("--name", {"required": True}),
        ("--stripe-customer", {"default": None, "help": "Stripe customer id (cus_...)"}),
    ]),
    ("orgs", "list orgs", []),
    ("attach-stripe", "attach a Stripe customer (payment method) to an org", [
        ("--org", {"required": True}),
        ("--customer", {"required": True, "help": "Stripe customer id (cus_...)"}),
    ]),
    ("set-limits", "set an org's rate limits (requests, tokens per minute); 0 or --clear: "
     "back to the gateway's default", [
        ("--org", {"required": True}),
        ("--rpm", {"type": int, "default": None, "help": "requests per minute (0: default)"}),
        ("--tpm", {"type": int, "default": None, "help": "tokens per minute (0: default)"}),
        ("--clear", {"action": "store_true", "help": "both limits back to the default"}),
    ]),
    ("create-project", "create a project in an org; prints its id", [
        ("--org", {"required": True}), ("--name", {"required": True}),
    ]),
    ("projects", "list an org's projects", [("--org", {"required": True})]),
    ("create-key", "create an API key; prints it ONCE (only its hash is stored)", [
        ("--org", {"required": True}), ("--name", {"default": ""}),
    ]),
    ("revoke-key", "revoke an API key by its id (ie_...)", [
        ("--key", {"required": True, "dest": "key_id", "help": "key id, e.g. ie_0123456789ab"}),
    ]),
    ("list-keys", "list an org's API keys (ids only)", [("--org", {"required": True})]),
    ("usage", "usage: tokens, requests, dollars owed and charged, per project and day", [
        ("--org", {"required": True}), ("--project", {"default": ""}),
        ("--since", {"default": None, "help": "UTC date YYYY-MM-DD"}),
    ]),
    ("charges", "list an org's charges", [("--org", {"required": True})]),
    ("bill-now", "run the billing worker once (create and send due charges)", []),
]  # fmt: skip


def add_commands(admin: argparse.ArgumentParser) -> None:
    """The admin subcommands, under the `admin` parser of `python -m metering`."""
    sub = admin.add_subparsers(dest="admin_command", required=True, metavar="COMMAND")
    for name, help_text, options in _COMMANDS:
        parser = sub.add_parser(name, help=help_text, description=help_text)
        parser.add_argument("--json", action="store_true", help="print JSON")
        for flag, kwargs in options:
            parser.add_argument(flag, **kwargs)


def _since(value: str | None) -> dt.datetime | None:
    if value is None:
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise LedgerError(f"--since {value!r} is not a date: use YYYY-MM-DD") from None


def run_command(args: argparse.Namespace, settings: Settings) -> Any:
    engine = make_engine(settings.database_url, pool_size=1)
    ledger = Ledger(engine, max_unpaid_usd=settings.max_unpaid_usd)
    try:
        handlers: dict[str, Callable[[], Any]] = {
            "create-org": lambda: org_as_dict(ledger.create_org(args.name, args.stripe_customer)),
            "orgs": lambda: [org_as_dict(o) for o in ledger.list_orgs()],
            "attach-stripe": lambda: org_as_dict(ledger.attach_stripe(args.org, args.customer)),
            "set-limits": lambda: org_as_dict(
                ledger.set_rate_limits(args.org, args.rpm, args.tpm, clear=args.clear)
            ),
            "create-project": lambda: _project(ledger.create_project(args.org, args.name)),
            "projects": lambda: [_project(p) for p in ledger.list_projects(args.org)],
            "create-key": lambda: _new_key(*ledger.create_key(args.org, args.name)),
            "revoke-key": lambda: _key(ledger.revoke_key(args.key_id)),
            "list-keys": lambda: [_key(k) for k in ledger.list_keys(args.org)],
            "usage": lambda: usage_as_dict(
                ledger.usage(args.org, args.project, _since(args.since))
            ),
            "charges": lambda: [charge_as_dict(c) for c in ledger.list_charges(args.org)],
            "bill-now": lambda: _bill_now(engine, settings),
        }
        return handlers[args.admin_command]()
    finally:
        engine.dispose()


def _bill_now(engine: Any, settings: Settings) -> Any:
    # Imported here: the stripe SDK is slow to import and only this command needs it.
    from metering.billing import BillingWorker, config_from

    return BillingWorker(engine, config_from(settings)).run_once().as_dict()


def run(args: argparse.Namespace, settings: Settings) -> int:
    """Runs the parsed admin command and prints its result; the exit status."""
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
        print(_text(args.admin_command, result))
    return 0


# ---- output ------------------------------------------------------------------------------


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


def org_as_dict(org: Org) -> dict[str, Any]:
    return {
        "org_id": org.id,
        "name": org.name,
        "stripe_customer_id": org.stripe_customer_id or "",
        "payment_method_id": org.payment_method_id or "",
        "billing_state": state_of(org),
        # 0: the gateway's default (GATEWAY_RATE_LIMIT_RPM / _TPM)
        "rate_limit_rpm": org.rate_limit_rpm or 0,
        "rate_limit_tpm": org.rate_limit_tpm or 0,
        "created_at": org.created_at.isoformat(),
    }


def charge_as_dict(charge: Charge) -> dict[str, Any]:
    return {
        "seq": charge.seq,
        "org_id": charge.org_id,
        "amount_cents": charge.amount_cents,
        "currency": charge.currency,
        "state": charge.state,
        "idempotency_key": charge.idempotency_key,
        "tokens_from": charge.tokens_from,
        "tokens_to": charge.tokens_to,
        "stripe_payment_intent_id": charge.stripe_payment_intent_id or "",
        "stripe_status": charge.stripe_status or "",
        "error": charge.error or "",
        "attempts": charge.attempts,
        "created_at": charge.created_at.isoformat(),
        "metadata": json.loads(charge.metadata_json),
    }


def usage_as_dict(report: UsageReport) -> dict[str, Any]:
    return {
        "org_id": report.org_id,
        "org_name": report.org_name,
        "total_tokens": report.total_tokens,
        "total_requests": report.total_requests,
        "owed_dollars": report.owed_dollars,
        "charged_dollars": report.charged_dollars,
        "pending_dollars": report.pending_dollars,
        "billing_state": report.billing.state,
        "billing_ok": report.billing.ok,
        "billing_message": report.billing.message,
        "per_project": {
            p.project_id: {"tokens": p.tokens, "requests": p.requests} for p in report.projects
        },
        "per_day": [
            {"day": b.day, "project_id": b.project_id, "tokens": b.tokens, "requests": b.requests}
            for b in report.buckets
        ],
    }
