"""alerts with a lifecycle, and the points' data rules (min, max, flatline)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 08:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

OPEN = sa.text("state <> 'resolved'")


def upgrade() -> None:
    with op.batch_alter_table("points", schema=None) as batch_op:
        batch_op.add_column(sa.Column("min", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("max", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("flatline", sa.Integer(), nullable=True))
    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
        sa.Column("rule", sa.String(64), nullable=False),
        sa.Column("subject", sa.String(500), nullable=False),
        sa.Column(
            "gateway_id",
            sa.Integer(),
            sa.ForeignKey("gateways.id", ondelete="SET NULL"),
            nullable=True,
        ),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("first_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("notified_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("acked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("ack_note", sa.Text(), nullable=True),
        sa.Column("ack_by", sa.String(200), nullable=True),
    )
    # One open alert per (rule, subject); resolved ones pile up as history.
    op.create_index(
        "uq_alerts_open",
        "alerts",
        ["rule", "subject"],
        unique=True,
        postgresql_where=OPEN,
        sqlite_where=OPEN,
    )
    op.create_index("ix_alerts_state", "alerts", ["state"])
    op.create_index("ix_alerts_gateway_id", "alerts", ["gateway_id"])


def downgrade() -> None:
    op.drop_table("alerts")
    with op.batch_alter_table("points", schema=None) as batch_op:
        batch_op.drop_column("flatline")
        batch_op.drop_column("max")
        batch_op.drop_column("min")
