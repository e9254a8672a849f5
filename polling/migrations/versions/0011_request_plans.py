"""request plans learnt from devices that refuse merged reads (exception 2)

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 13:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A new table: no batch mode needed on SQLite (nothing existing is altered).
    op.create_table(
        "request_plans",
        sa.Column(
            "gateway_id",
            sa.Integer(),
            sa.ForeignKey("gateways.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("basis", sa.String(40), nullable=False),
        sa.Column("spans", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("unavailable", sa.JSON(), nullable=False),
        sa.Column("learned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("retry_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("events", sa.JSON(), nullable=False),
    )
    op.create_index("ix_request_plans_retry_at", "request_plans", ["retry_at"])


def downgrade() -> None:
    op.drop_index("ix_request_plans_retry_at", table_name="request_plans")
    op.drop_table("request_plans")
