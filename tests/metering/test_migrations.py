"""The Alembic migrations build exactly the schema the code's models describe, and running
them again is a no-op (``python -m metering migrate`` is safe on every start)."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import metering.models  # noqa: F401  (registers the tables)
from metering.database import make_engine, migrate


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
