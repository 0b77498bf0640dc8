"""The Alembic migrations build exactly the schema the code's models describe, and running
them again is a no-op (``python -m metering migrate`` is safe on every start); 0004 dates each
org by the payment-method events already applied, 0005 keys usage events by org and event id,
0006 adds per-org limits; each goes down again."""

from __future__ import annotations

import datetime as dt

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect as sa_inspect
from sqlalchemy import text
from sqlmodel import Session, SQLModel

import metering.models  # noqa: F401  (registers the tables)
from metering.database import alembic_config, make_engine, migrate
from metering.models import Org

NEWEST = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)


def _drift(url: str) -> list[object]:
    engine = make_engine(url)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), SQLModel.metadata)
    engine.dispose()
    return list(diff)


def test_sqlite_schema_matches_models(sqlite_url: str) -> None:
    migrate(sqlite_url)  # second run: nothing to do, nothing breaks
    assert _drift(sqlite_url) == []


@pytest.mark.postgres
def test_postgres_schema_matches_models(pg_url: str) -> None:
    migrate(pg_url)
    assert _drift(pg_url) == []


def _back_to_0003_and_up_again(url: str) -> dt.datetime | None:
    """Down to 0003 (before each org knew its newest payment-method event), one org that had
    two payment-method events applied, up to head: what the org then knows."""
    from alembic import command

    engine = make_engine(url)
    with engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0003")
        connection.execute(text(
            "INSERT INTO orgs (id, name, billing_state, billing_failures, created_at) "
            "VALUES ('org_1', 'acme', 'ok', 0, :at)"
        ), {"at": NEWEST})  # fmt: skip
        for event_id, outcome, created in (
            ("evt_1", "payment_method_set", NEWEST - dt.timedelta(days=1)),
            ("evt_2", "payment_method_set", NEWEST),
            ("evt_3", "charge_succeeded", NEWEST + dt.timedelta(days=1)),
        ):
            connection.execute(text(
                "INSERT INTO stripe_events (id, type, outcome, org_id, stripe_created, "
                "applied_at) VALUES (:id, 'customer.updated', :outcome, 'org_1', :at, :at)"
            ), {"id": event_id, "outcome": outcome, "at": created})  # fmt: skip
    engine.dispose()
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        org = session.get(Org, "org_1")
        assert org is not None
        newest = org.payment_method_event_at
    engine.dispose()
    return newest if newest is None or newest.tzinfo else newest.replace(tzinfo=dt.UTC)


def test_sqlite_upgrade_dates_each_org_by_its_newest_payment_method_event(sqlite_url: str) -> None:
    # A setup delivered late after the upgrade must find the org already newer than it.
    assert _back_to_0003_and_up_again(sqlite_url) == NEWEST
    assert _drift(sqlite_url) == []


@pytest.mark.postgres
def test_postgres_upgrade_dates_each_org_by_its_newest_payment_method_event(pg_url: str) -> None:
    assert _back_to_0003_and_up_again(pg_url) == NEWEST
    assert _drift(pg_url) == []


def test_one_head_and_it_is_the_rate_limits() -> None:
    # `python -m metering migrate` upgrades to "head": two heads would make it fail.
    from alembic.script import ScriptDirectory

    heads = ScriptDirectory.from_config(alembic_config("sqlite://")).get_heads()
    assert heads == ["0006"]


def _limits_down_and_up(url: str) -> tuple[int | None, int | None]:
    """An org with its own limits; down before 0006 (the columns go, the org stays), up again:
    the org is back on the gateway's default."""
    from alembic import command

    engine = make_engine(url)
    with Session(engine) as session:
        session.add(Org(id="org_lim", name="acme", rate_limit_rpm=10, rate_limit_tpm=1000))
        session.commit()
    with engine.begin() as connection:
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
        columns = {c["name"] for c in sa_inspect(connection).get_columns("orgs")}
        assert "rate_limit_rpm" not in columns and "rate_limit_tpm" not in columns
        assert connection.execute(text("SELECT name FROM orgs WHERE id = 'org_lim'")).scalar() == (
            "acme"
        )
    engine.dispose()
    migrate(url)
    engine = make_engine(url)
    with Session(engine) as session:
        org = session.get(Org, "org_lim")
        assert org is not None
        limits = (org.rate_limit_rpm, org.rate_limit_tpm)
    engine.dispose()
    return limits


def test_sqlite_rate_limit_columns_go_down_and_up(sqlite_url: str) -> None:
    assert _limits_down_and_up(sqlite_url) == (None, None)
    assert _drift(sqlite_url) == []


@pytest.mark.postgres
def test_postgres_rate_limit_columns_go_down_and_up(pg_url: str) -> None:
    assert _limits_down_and_up(pg_url) == (None, None)
    assert _drift(pg_url) == []


def _usage_key_down_and_up(url: str) -> tuple[list[str], list[str], int]:
    """Two orgs' events at head; down before 0005, then up again: the primary key at 0004,
    at head, and the rows kept."""
    from alembic import command

    engine = make_engine(url)
    with engine.begin() as connection:
        for org in ("org_k1", "org_k2"):
            connection.execute(text(
                "INSERT INTO orgs (id, name, billing_state, billing_failures, created_at) "
                "VALUES (:id, 'acme', 'ok', 0, :at)"
            ), {"id": org, "at": NEWEST})  # fmt: skip
            connection.execute(text(
                "INSERT INTO usage_events (event_id, org_id, project_id, model, tokens, inputs, "
                "at, recorded_at) VALUES (:event, :org, '', 'm', 5, 1, :at, :at)"
            ), {"event": f"req-{org}", "org": org, "at": NEWEST})  # fmt: skip
        config = alembic_config(url)
        config.attributes["connection"] = connection
        command.downgrade(config, "0004")
        before = sa_inspect(connection).get_pk_constraint("usage_events")["constrained_columns"]
    engine.dispose()
    migrate(url)
    engine = make_engine(url)
    with engine.connect() as connection:
        after = sa_inspect(connection).get_pk_constraint("usage_events")["constrained_columns"]
        rows = connection.execute(text("SELECT count(*) FROM usage_events")).scalar_one()
    engine.dispose()
    return before, after, rows


def test_sqlite_usage_key_goes_down_and_up(sqlite_url: str) -> None:
    assert _usage_key_down_and_up(sqlite_url) == (["event_id"], ["org_id", "event_id"], 2)
    assert _drift(sqlite_url) == []


@pytest.mark.postgres
def test_postgres_usage_key_goes_down_and_up(pg_url: str) -> None:
    assert _usage_key_down_and_up(pg_url) == (["event_id"], ["org_id", "event_id"], 2)
    assert _drift(pg_url) == []
