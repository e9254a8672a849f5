"""the write log (`pollctl write`, `pollctl writes`), and gateways that take one register
per write (function 6)

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 13:45:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends, never batch mode: on SQLite, batch mode may copy
    # `gateways` and drop the old one, which cascades to every reading and poll-log row.
    op.add_column(
        "gateways",
        sa.Column("single_register_write", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    # Names, not foreign keys: the record of a write outlives the gateway's configuration.
    op.create_table(
        "writes",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user", sa.String(200), nullable=False),
        sa.Column("gateway", sa.String(200), nullable=False),
        sa.Column("point", sa.String(200), nullable=False),
        sa.Column("old", sa.Text(), nullable=True),
        sa.Column("new", sa.Text(), nullable=False),
        sa.Column("read_back", sa.Text(), nullable=True),
        sa.Column("outcome", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_writes_gateway_at", "writes", ["gateway", "at"])
    op.create_index("ix_writes_at", "writes", ["at"])


def downgrade() -> None:
    op.drop_table("writes")
    # A plain DROP COLUMN, never batch mode's copy of `gateways` (see 0008).
    op.drop_column("gateways", "single_register_write")
