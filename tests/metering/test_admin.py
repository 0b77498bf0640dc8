"""The admin CLI as a user runs it (`python -m metering admin ... --json`, real processes):
org/project/key life cycle, usage and charges output, and clear errors with
nothing written for unknown ids."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from intent_embed.v1 import metering_pb2
from metering.__main__ import main as metering_main
from metering.models import utcnow
from metering.usage import Event
from tests.metering.harness import Service

ROOT = Path(__file__).resolve().parents[2]


def admin(url: str, *args: str, ok: bool = True, **env: str) -> Any:
    """Runs the CLI in-process (same entry point as `python -m metering admin`): fast."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("METERING_DATABASE_URL", url)
        for name, value in env.items():
            mp.setenv(name, value)
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        code = metering_main(["admin", *args, "--json"])
    if not ok:
        assert code == 2, out.getvalue() + err.getvalue()
        assert out.getvalue() == ""
        return err.getvalue()
    assert code == 0, err.getvalue()
    return json.loads(out.getvalue())


def admin_process(url: str, *args: str, ok: bool = True) -> Any:
    """Runs `python -m metering admin ... --json` as a real process, as `make run` does."""
    env = {**os.environ, "METERING_DATABASE_URL": url, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "metering", "admin", *args, "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )
    if not ok:
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stdout == ""
        return proc.stderr
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def counts(url: str) -> dict[str, int]:
    engine = create_engine(url)
    with engine.connect() as conn:
        result = {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("orgs", "projects", "api_keys", "usage_events", "charges")
        }
    engine.dispose()
    return result


def test_org_project_key_life_cycle_and_usage(sqlite_url: str) -> None:
    from metering.database import make_engine
    from metering.ledger import Ledger

    org = admin(sqlite_url, "create-org", "--name", "acme")
    assert org["billing_state"] == "no_payment_method"
    org_id = org["org_id"]
    assert (
        admin(sqlite_url, "attach-stripe", "--org", org_id, "--customer", "cus_123")[
            "stripe_customer_id"
        ]
        == "cus_123"
    )
    project = admin(sqlite_url, "create-project", "--org", org_id, "--name", "web")
    key = admin(sqlite_url, "create-key", "--org", org_id, "--name", "ci")
    assert key["api_key"].startswith(key["key_id"] + "_")

    ledger = Ledger(make_engine(sqlite_url))
    assert ledger.authenticate(key["api_key"]).org_id == org_id
    ledger.record_calls(
        [
            [
                Event("a", org_id, project["project_id"], "intent-embed", 4_000_000, 3, utcnow()),
                Event("b", org_id, "", "intent-embed", 1_000_000, 1, utcnow()),
            ]
        ]
    )
    usage = admin(sqlite_url, "usage", "--org", org_id)
    assert (usage["total_tokens"], usage["total_requests"], usage["owed_dollars"]) == (
        5_000_000,
        2,
        4,
    )
    assert usage["charged_dollars"] == 0
    assert usage["per_project"][project["project_id"]] == {"tokens": 4_000_000, "requests": 1}
    assert [d["tokens"] for d in usage["per_day"]] == [1_000_000, 4_000_000]

    listed = admin(sqlite_url, "list-keys", "--org", org_id)
    assert [k["key_id"] for k in listed] == [key["key_id"]]
    assert "api_key" not in listed[0] and "key_hash" not in listed[0]
    assert admin(sqlite_url, "revoke-key", "--key", key["key_id"])["revoked"] is True
    assert admin(sqlite_url, "list-keys", "--org", org_id)[0]["revoked"] is True
    from metering.errors import Unauthenticated

    with pytest.raises(Unauthenticated):
        ledger.authenticate(key["api_key"])

    # $4 owed is below the default $20 threshold, and the month has not ended: no charge.
    assert admin(sqlite_url, "bill-now")["created"] == []
    # From the first dollar, with Stripe off: the charge is computed and stays pending.
    bill = admin(sqlite_url, "bill-now", METERING_CHARGE_THRESHOLD_DOLLARS="1")
    assert bill["pending"] == [f"{org_id}-1"]
    (charge,) = admin(sqlite_url, "charges", "--org", org_id)
    assert (charge["amount_cents"], charge["state"]) == (400, "pending")
    ledger.engine.dispose()


def test_unknown_ids_fail_clearly_and_write_nothing(sqlite_url: str) -> None:
    org_id = admin(sqlite_url, "create-org", "--name", "acme")["org_id"]
    before = counts(sqlite_url)
    for args, needle in [
        (("create-project", "--org", "org_missing", "--name", "x"), "org_missing"),
        (("create-key", "--org", "org_missing"), "org_missing"),
        (("attach-stripe", "--org", "org_missing", "--customer", "cus_1"), "org_missing"),
        (("attach-stripe", "--org", org_id, "--customer", "card_1"), "cus_"),
        (("revoke-key", "--key", "ie_missing"), "ie_missing"),
        (("usage", "--org", org_id, "--since", "yesterday"), "YYYY-MM-DD"),
        (("charges", "--org", "org_missing"), "org_missing"),
    ]:
        err = admin(sqlite_url, *args, ok=False)
        assert err.startswith("error:") and needle in err, err
    assert counts(sqlite_url) == before


def test_missing_schema_points_to_migrate(tmp_path: Path) -> None:
    err = admin_process(f"sqlite:///{tmp_path / 'empty.db'}", "orgs", ok=False)
    assert "python -m metering migrate" in err


async def test_set_limits_reach_the_gateway_through_authenticate(service: Service) -> None:
    # An operator gives one org its own limits; the gateway learns them from Authenticate.
    url = service.ledger.engine.url.render_as_string(hide_password=False)
    org_id = admin(url, "create-org", "--name", "acme")["org_id"]
    _, key = service.ledger.create_key(org_id)

    async def limits() -> tuple[int, int]:
        reply = await service.stub.Authenticate(metering_pb2.AuthenticateRequest(api_key=key))
        return reply.requests_per_minute, reply.tokens_per_minute

    assert await limits() == (0, 0)  # the gateway's default
    org = admin(url, "set-limits", "--org", org_id, "--rpm", "120", "--tpm", "50000")
    assert (org["rate_limit_rpm"], org["rate_limit_tpm"]) == (120, 50_000)
    assert await limits() == (120, 50_000)
    admin(url, "set-limits", "--org", org_id, "--tpm", "0")  # one limit back, the other kept
    assert await limits() == (120, 0)
    admin(url, "set-limits", "--org", org_id, "--tpm", "7", "--rpm", "9")
    admin(url, "set-limits", "--org", org_id, "--clear")
    assert await limits() == (0, 0)
    assert [o["rate_limit_rpm"] for o in admin(url, "orgs")] == [0]

    for args, needle in [
        (("set-limits", "--org", "org_missing", "--rpm", "5"), "org_missing"),
        (("set-limits", "--org", org_id, "--rpm", "-1"), "--rpm"),
        (("set-limits", "--org", org_id), "--clear"),
    ]:
        err = admin(url, *args, ok=False)
        assert err.startswith("error:") and needle in err, err
    assert await limits() == (0, 0)
