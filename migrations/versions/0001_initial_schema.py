"""initial schema: photos, scores, jobs, written files

Revision ID: 0001
Revises:
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import musiq_daemon.index.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "photos",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("rel_path", sa.Text(), nullable=False),
        sa.Column("content_hash", sa.String(length=120), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("inode", sa.BigInteger(), nullable=True),
        sa.Column("format", sa.String(length=32), nullable=True),
        sa.Column("width", sa.Integer(), nullable=True),
        sa.Column("height", sa.Integer(), nullable=True),
        sa.Column("taken_at", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.Column("first_seen", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.Column("last_seen", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.Column("missing_since", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_photos")),
        sa.UniqueConstraint("root", "rel_path", name=op.f("uq_photos_root_rel_path")),
    )
    with op.batch_alter_table("photos", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_photos_content_hash"), ["content_hash"], unique=False)

        batch_op.create_index(batch_op.f("ix_photos_missing_since"), ["missing_since"], unique=False)
        batch_op.create_index(batch_op.f("ix_photos_taken_at"), ["taken_at"], unique=False)

    op.create_table(
        "written_files",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("dev", sa.BigInteger(), nullable=False),
        sa.Column("inode", sa.BigInteger(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("mtime_ns", sa.BigInteger(), nullable=False),
        sa.Column("written_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_written_files")),
        sa.UniqueConstraint("path", name=op.f("uq_written_files_path")),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("photo_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("next_attempt_at", musiq_daemon.index.models.UTCDateTime(), nullable=True),
        sa.Column("created_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["photo_id"], ["photos.id"], name=op.f("fk_jobs_photo_id_photos"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("photo_id", "model_id", name=op.f("uq_jobs_photo_id_model_id")),
    )
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_jobs_photo_id"), ["photo_id"], unique=False)
        batch_op.create_index("ix_jobs_state_next_attempt", ["state", "next_attempt_at"], unique=False)

    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("photo_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=64), nullable=False),
        sa.Column("model_version", sa.String(length=64), nullable=False),
        sa.Column("variant", sa.String(length=32), nullable=False),
        sa.Column("model_sha256", sa.String(length=64), nullable=True),
        sa.Column("is_latest", sa.Boolean(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("raw", sa.Float(), nullable=False),
        sa.Column("scale_min", sa.Float(), nullable=False),
        sa.Column("scale_max", sa.Float(), nullable=False),
        sa.Column("resolution_policy", sa.String(length=32), nullable=False),
        sa.Column("device", sa.String(length=16), nullable=False),
        sa.Column("num_tokens", sa.Integer(), nullable=False),
        sa.Column("duration_s", sa.Float(), nullable=False),
        sa.Column("source", sa.String(length=64), nullable=True),
        sa.Column("scored_at", musiq_daemon.index.models.UTCDateTime(), nullable=False),
        sa.Column("written_to", sa.String(length=16), nullable=True),
        sa.Column("written_path", sa.Text(), nullable=True),
        sa.Column("rating_written", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["photo_id"], ["photos.id"], name=op.f("fk_scores_photo_id_photos"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scores")),
        sa.UniqueConstraint(
            "photo_id", "model_id", "model_version", name=op.f("uq_scores_photo_id_model_id_model_version")
        ),
    )
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.create_index(
            "ix_scores_model_latest_score", ["model_id", "is_latest", "score"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_scores_photo_id"), ["photo_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_scores_scored_at"), ["scored_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scores_scored_at"))
        batch_op.drop_index(batch_op.f("ix_scores_photo_id"))
        batch_op.drop_index("ix_scores_model_latest_score")

    op.drop_table("scores")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_state_next_attempt")
        batch_op.drop_index(batch_op.f("ix_jobs_photo_id"))

    op.drop_table("jobs")
    op.drop_table("written_files")
    with op.batch_alter_table("photos", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_photos_taken_at"))
        batch_op.drop_index(batch_op.f("ix_photos_content_hash"))

        batch_op.drop_index(batch_op.f("ix_photos_missing_since"))

    op.drop_table("photos")
