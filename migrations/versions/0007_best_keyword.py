"""photos.best_keyword: what became of a photo's ``MUSIQ|best-of-burst`` keyword

``added`` (musiqd's keyword is there: the photo was its burst's best), ``removed`` (musiqd took it away
again), ``user`` (the keyword's state is the user's: musiqd leaves it alone), NULL: never decided.
`musiqd cull --write` and the daemon compare it with the bursts to find the photos whose keyword must
change.

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


def downgrade() -> None:
    op.drop_column("photos", "best_keyword")
