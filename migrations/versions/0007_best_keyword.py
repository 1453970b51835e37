"""photos.best_keyword: what musiqd last did with a photo's ``MUSIQ|best-of-burst`` keyword

True: added it (the photo was its burst's best), False: took it away again, NULL: never touched. `musiqd
cull --write` and the daemon compare it with the bursts to find the photos whose keyword must change.

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
    op.add_column("photos", sa.Column("best_keyword", sa.Boolean(), nullable=True))


def downgrade() -> None:
    op.drop_column("photos", "best_keyword")
