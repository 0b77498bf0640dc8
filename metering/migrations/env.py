"""Alembic environment: runs migrations on the connection handed in by
:func:`metering.database.migrate`, or on a fresh engine for the configured URL (alembic CLI)."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import metering.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from metering.database import make_engine

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = make_engine(str(config.get_main_option("sqlalchemy.url")), pool_size=1)
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata)
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
