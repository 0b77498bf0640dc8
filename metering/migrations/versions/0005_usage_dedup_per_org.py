"""usage events are duplicates only within their org

The primary key of ``usage_events`` was the event id alone, and event ids are the callers'
request ids: one org's request id could make another org's usage a "duplicate", dropped. The
key is now (org_id, event_id). Every existing row stays: ids that were unique alone are unique
within their org.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 01:00:00.000000
"""

from __future__ import annotations

import warnings

from alembic import op
from sqlalchemy.exc import SAWarning

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

_NAME = "usage_events_pkey"


def upgrade() -> None:
    _primary_key(["org_id", "event_id"])


def downgrade() -> None:
    # Fails (and changes nothing) if two orgs recorded the same id since the upgrade: which
    # of their events to drop is not the migration's to decide.
    _primary_key(["event_id"])


def _primary_key(columns: list[str]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot alter a primary key: the table is copied under the new one.
        with warnings.catch_warnings():
            # SQLAlchemy notes that the copy's key differs from the old columns': it is meant to.
            warnings.filterwarnings("ignore", "Table '_alembic_tmp_usage_events'", SAWarning)
            with op.batch_alter_table("usage_events", recreate="always") as events:
                events.create_primary_key(_NAME, columns)
    else:
        op.drop_constraint(_NAME, "usage_events", type_="primary")
        op.create_primary_key(_NAME, "usage_events", columns)
