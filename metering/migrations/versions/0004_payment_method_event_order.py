"""payment-method events in Stripe's order

An org remembers Stripe's ``created`` of the newest event that changed its payment method,
so an older one delivered late (Stripe neither orders deliveries nor stops retrying for three
days) no longer sets an old card back.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03 09:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orgs",
        sa.Column("payment_method_event_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
    )
    # The events already applied say how new each org's payment method is: a late delivery
    # of an older one, arriving after the upgrade, is then ignored too.
    orgs = sa.table("orgs", sa.column("id", sa.String), sa.column("payment_method_event_at"))
    events = sa.table(
        "stripe_events",
        sa.column("org_id", sa.String),
        sa.column("outcome", sa.String),
        sa.column("stripe_created"),
    )
    newest = (
        sa.select(sa.func.max(events.c.stripe_created))
        .where(events.c.org_id == orgs.c.id, events.c.outcome == "payment_method_set")
        .scalar_subquery()
    )
    op.execute(orgs.update().values(payment_method_event_at=newest))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as orgs:
        orgs.drop_column("payment_method_event_at")
