"""gateways name the site (network) they live on; existing ones are on `default`

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-05 09:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A server default fills every existing row in the same statement: no rewrite pass on
    # PostgreSQL 11+ (a constant default is stored once in the catalogue).
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("site", sa.String(64), nullable=False, server_default="default")
        )


def downgrade() -> None:
    # A plain DROP COLUMN (SQLite 3.35+ has it), never batch mode's copy of the table:
    # dropping the old `gateways` on SQLite would cascade to every reading and poll-log row.
    op.drop_column("gateways", "site")
