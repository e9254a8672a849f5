"""gateways whose devices take coils only as a write of several coils (function 15)

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-04 16:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A plain ADD COLUMN on both backends, never batch mode: on SQLite, batch mode may copy
    # `gateways` and drop the old one, which cascades to every reading and poll-log row.
    op.add_column(
        "gateways",
        sa.Column("multiple_coil_write", sa.Boolean(), nullable=False, server_default=sa.false()),
    )


def downgrade() -> None:
    # A plain DROP COLUMN, never batch mode's copy of `gateways` (see 0008).
    op.drop_column("gateways", "multiple_coil_write")
