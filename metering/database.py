"""Connections to the ledger database: engine creation and the schema migrations entry point.

SQLite (the default) runs in WAL mode with ``synchronous=FULL`` so that an acknowledged commit
survives a crash, and a busy timeout so the service, the billing worker and the admin CLI can
share one file. PostgreSQL is used as is. Migrations are Alembic's, shipped in the package
(:mod:`metering.migrations`), run by ``python -m metering migrate`` or at service start.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlmodel import create_engine

if TYPE_CHECKING:
    from alembic.config import Config

log = logging.getLogger("metering.database")

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"
# Any constant works; it only has to be the same for every metering process.
MIGRATION_LOCK_ID = 0x6D65746572  # "meter"


def _sqlite_pragmas(dbapi_conn: Any, _record: Any) -> None:
    # Python's sqlite3 opens transactions lazily and would let a reader upgrade to a writer
    # mid-transaction (SQLITE_BUSY without waiting); we issue BEGIN ourselves instead.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _sqlite_begin(conn: Any) -> None:
    # Every transaction takes the write lock up front: one writer at a time, no upgrade
    # deadlocks, and the billing worker's read-then-insert is serialised against others.
    conn.exec_driver_sql("BEGIN IMMEDIATE")


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str, *, pool_size: int = 8) -> Engine:
    """An engine for `url`; SQLite files get WAL, full sync and immediate transactions."""
    if is_sqlite(url):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, pool_size=pool_size
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    return create_engine(url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=True)


def alembic_config(url: str) -> Config:
    # Imported here: alembic is only needed to migrate, and the admin CLI starts faster.
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # Alembic's config is an ini parser: a literal % in a URL (encoded options) must be doubled.
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


def migrate(url: str) -> None:
    """Brings the schema at `url` to the newest revision (idempotent)."""
    from alembic import command

    engine = make_engine(url, pool_size=1)
    try:
        with engine.begin() as connection:
            if engine.dialect.name == "postgresql":
                # Replicas started together with MIGRATE_ON_START take turns: the second
                # waits, then finds the schema current.
                connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({MIGRATION_LOCK_ID})")
            config = alembic_config(url)
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()
    log.info("event=migrated url_backend=%s", make_url(url).get_backend_name())
