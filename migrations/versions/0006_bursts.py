"""bursts: near-identical shots grouped by `musiqd cull`, and what grouping needs of each photo

``photos.camera`` (EXIF make and model), ``photos.taken_at_ms`` (capture time with sub-seconds, ms since
the epoch) and ``photos.phash`` (a 64-bit perceptual hash) are read once per file version and kept;
``photos.burst_id`` names the photo's group; ``bursts`` holds each group and its best-scored photo.

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import musiq_daemon.index.models

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "bursts",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("camera", sa.String(length=200), nullable=True),
        sa.Column("first_taken", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.Column("last_taken", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("best_photo_id", sa.Integer(), nullable=True),
        sa.Column("decided_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bursts")),
    )
    # Plain columns, no foreign key: SQLite can add those in place, where a constraint would make Alembic
    # copy the photos table, and dropping the old copy would cascade into every score.
    op.add_column("photos", sa.Column("camera", sa.String(length=200), nullable=True))
    op.add_column("photos", sa.Column("taken_at_ms", sa.BigInteger(), nullable=True))
    op.add_column("photos", sa.Column("phash", sa.BigInteger(), nullable=True))
    op.add_column("photos", sa.Column("burst_id", sa.Integer(), nullable=True))
    op.create_index(op.f("ix_photos_burst_id"), "photos", ["burst_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_photos_burst_id"), table_name="photos")
    for column in ("burst_id", "phash", "taken_at_ms", "camera"):
        op.drop_column("photos", column)
    op.drop_table("bursts")
