"""photos.best_keyword: what became of a photo's ``MUSIQ|best-of-burst`` keyword; bursts.keyword_done

``added`` (musiqd's keyword is there: the photo was its burst's best), ``removed`` (musiqd took it away
again), ``user`` (the keyword's state is the user's: musiqd leaves it alone), NULL: never decided.
`musiqd cull --write` and the daemon compare it with the bursts to find the photos whose keyword must
change. ``bursts.keyword_done``: the burst's best photo has been seen to (a new burst starts without), so
that finding them never reads every burst or every photo. ``ix_photos_phash``: the daemon looks for photos
whose features are still to be read (``phash IS NULL``) every few seconds, which must not read every photo.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # In place, as in 0006: SQLite must never copy the photos table (dropping the copy cascades).
    op.add_column("photos", sa.Column("best_keyword", sa.String(length=8), nullable=True))
    op.create_index(op.f("ix_photos_best_keyword"), "photos", ["best_keyword"], unique=False)
    op.create_index(op.f("ix_photos_phash"), "photos", ["phash"], unique=False)
    op.add_column(
        "bursts", sa.Column("keyword_done", sa.Boolean(), nullable=False, server_default=sa.false())
    )
    op.create_index(op.f("ix_bursts_keyword_done"), "bursts", ["keyword_done"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_photos_phash"), table_name="photos")
    op.drop_index(op.f("ix_bursts_keyword_done"), table_name="bursts")
    op.drop_column("bursts", "keyword_done")
    op.drop_index(op.f("ix_photos_best_keyword"), table_name="photos")
    op.drop_column("photos", "best_keyword")
