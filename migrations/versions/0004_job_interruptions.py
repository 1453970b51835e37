"""jobs.interrupted: how often the process died while the job was in flight

A kill (out of memory, a watchdog, a power cut) says nothing about the photos that were only waiting next
to the one being scored. The queue counts interruptions apart from attempts, and a photo interrupted
once is scored alone afterwards, so further kills are charged to it only.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("interrupted", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("interrupted")
