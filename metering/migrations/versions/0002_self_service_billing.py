"""self-service billing: payment methods and applied Stripe events

An org remembers the payment method a Stripe webhook reported (and is found by its Stripe
customer), a charge keeps the payment method it was created for, and ``stripe_events`` holds
the id of every webhook event applied, so a redelivery changes nothing.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25 09:12:40.311208
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel.sql.sqltypes
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "orgs",
        sa.Column("payment_method_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    )
    op.create_index(
        op.f("ix_orgs_stripe_customer_id"), "orgs", ["stripe_customer_id"], unique=False
    )
    op.add_column(
        "charges",
        sa.Column("payment_method_id", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True),
    )
    op.create_table(
        "stripe_events",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("outcome", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("org_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=True),
        sa.Column("stripe_created", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("applied_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("stripe_events")
    with op.batch_alter_table("charges") as charges:
        charges.drop_column("payment_method_id")
    op.drop_index(op.f("ix_orgs_stripe_customer_id"), table_name="orgs")
    with op.batch_alter_table("orgs") as orgs:
        orgs.drop_column("payment_method_id")
