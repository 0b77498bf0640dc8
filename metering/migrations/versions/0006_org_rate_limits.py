"""per-org rate limits

Each org may carry its own requests and tokens per minute; NULL (every existing org) means the
gateway's default, so the upgrade changes no one's limits.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-05 10:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("orgs", sa.Column("rate_limit_rpm", sa.BigInteger(), nullable=True))
    op.add_column("orgs", sa.Column("rate_limit_tpm", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("orgs") as orgs:
        orgs.drop_column("rate_limit_tpm")
        orgs.drop_column("rate_limit_rpm")
