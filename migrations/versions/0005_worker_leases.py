"""job leases and the worker registry: several scoring processes, on several machines, share one queue

``jobs.lease_owner`` names the process that claimed a running job and ``jobs.lease_expires_at`` says until
when its claim holds; the owner renews it while it works, and any process may take the job back once the
lease has run out (the owner died, or lost its machine). ``workers`` has one row per scoring process
(the daemon's workers, ``musiqd worker``) and per watcher (a daemon, with its roots), for ``musiqd status``.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import musiq_daemon.index.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("lease_owner", sa.String(length=120), nullable=True))
        batch.add_column(
            sa.Column("lease_expires_at", musiq_daemon.index.models.UTCDateTime(), nullable=True)
        )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(length=120), nullable=False),
        sa.Column("host", sa.String(length=255), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=True),
        sa.Column("models", sa.Text(), nullable=True),
        sa.Column("path_map", sa.Text(), nullable=True),
        sa.Column("roots", sa.Text(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.Column("heartbeat_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.Column("done", sa.BigInteger(), nullable=False),
        sa.Column("failed", sa.BigInteger(), nullable=False),
        sa.Column("busy_s", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_workers")),
    )
    op.create_index(op.f("ix_workers_heartbeat_at"), "workers", ["heartbeat_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_workers_heartbeat_at"), table_name="workers")
    op.drop_table("workers")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("lease_expires_at")
        batch.drop_column("lease_owner")
