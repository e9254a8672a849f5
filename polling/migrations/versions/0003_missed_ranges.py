"""missed ranges: a poll-log row may stand for a run of missed slots; slot conflicts

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03 23:50:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import polling.models

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("slot_conflicts", sa.Integer(), server_default="0", nullable=False)
        )
    with op.batch_alter_table("poll_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("slots", sa.Integer(), server_default="1", nullable=False))
        batch_op.add_column(
            sa.Column("last_slot_at", polling.models.UTCDateTime(timezone=True), nullable=True)
        )


def downgrade() -> None:
    with op.batch_alter_table("poll_log", schema=None) as batch_op:
        batch_op.drop_column("last_slot_at")
        batch_op.drop_column("slots")
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("slot_conflicts")
