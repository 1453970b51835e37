"""daemon state: the single row that musiqd status reads and musiqd pause/resume writes

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import musiq_daemon.index.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "daemon_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=True),
        sa.Column("host", sa.String(length=255), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("paused", sa.Boolean(), nullable=False),
        sa.Column("started_at", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.Column("heartbeat_at", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.Column("roots", sa.Text(), nullable=True),
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("device", sa.String(length=16), nullable=True),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("busy_s", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_daemon_state")),
    )


def downgrade() -> None:
    op.drop_table("daemon_state")
