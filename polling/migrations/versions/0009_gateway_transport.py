"""gateways name their transport (tcp, rtu-over-tcp, udp, tls, serial) and its options;
existing ones are tcp

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-05 14:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A constant server default fills existing rows without a rewrite (as 0008's site).
    with op.batch_alter_table("gateways", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("transport", sa.String(16), nullable=False, server_default="tcp")
        )
        batch_op.add_column(sa.Column("transport_options", sa.JSON(), nullable=True))


def downgrade() -> None:
    # Plain DROP COLUMNs, never batch mode's table copy (see 0008: it would cascade on SQLite).
    op.drop_column("gateways", "transport_options")
    op.drop_column("gateways", "transport")
