"""charge policy and declines by kind

An org on hold (a hard decline, or a charge out of retries) waits for a new payment method;
a charge remembers when it was first attempted (retries stop after a window) and which
Idempotency-Key its PaymentIntent creation was sent with, and since when (Stripe keeps a key
for 24 hours; an older key is not resent).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 08:40:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orgs",
        sa.Column("billing_hold", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    )
    op.add_column(
        "charges", sa.Column("first_attempt_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
    )
    op.add_column(
        "charges",
        sa.Column("request_key", sqlmodel.sql.sqltypes.AutoString(length=120), nullable=True),
    )
    op.add_column(
        "charges", sa.Column("request_key_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True)
    )
    # Charges already sent were sent with their own key, when they were created (a worker
    # sends a new charge in the run that creates it): an old key is then found out of date.
    charges = sa.table(
        "charges",
        sa.column("idempotency_key", sa.String),
        sa.column("attempts", sa.Integer),
        sa.column("created_at", sa.DateTime),
        sa.column("first_attempt_at", sa.DateTime),
        sa.column("request_key", sa.String),
        sa.column("request_key_at", sa.DateTime),
    )
    op.execute(
        charges.update()
        .where(charges.c.attempts > 0)
        .values(
            first_attempt_at=charges.c.created_at,
            request_key=charges.c.idempotency_key,
            request_key_at=charges.c.created_at,
        )
    )


def downgrade() -> None:
    with op.batch_alter_table("charges") as charges:
        charges.drop_column("request_key_at")
        charges.drop_column("request_key")
        charges.drop_column("first_attempt_at")
    with op.batch_alter_table("orgs") as orgs:
        orgs.drop_column("billing_hold")
