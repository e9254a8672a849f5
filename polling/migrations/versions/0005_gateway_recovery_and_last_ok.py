"""gateways keep their newest successful poll and their recovery probe's schedule

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 07:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(sa.Column("last_ok_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("next_probe_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("probe_delay_s", sa.Float(), nullable=True))
    # The newest ok poll already recorded, so an upgraded fleet does not start out "never".
    op.execute(
        "UPDATE gateways SET last_ok_at = (SELECT max(finished_at) FROM poll_log "
        "WHERE poll_log.gateway_id = gateways.id AND poll_log.outcome = 'ok')"
    )


def downgrade() -> None:
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.drop_column("probe_delay_s")
        batch_op.drop_column("next_probe_at")
        batch_op.drop_column("last_ok_at")
