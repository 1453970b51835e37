"""one row per photo: merge rows that name the same file under two (root, relative path) splits

``musiqd score`` keyed a photo by its folder, the daemon by its configured root, so a photo seen by both
had two rows. The row with the outermost root stays (the daemon's); the other's scores, jobs and history
move to it: of two scores of the same model version the newer stays, and per model only the newest score
is the latest.

Revision ID: 0003
Revises: 0002
"""

from __future__ import annotations

import posixpath
from collections import defaultdict

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    bind = op.get_bind()
    photos = sa.table(
        "photos",
        sa.column("id", sa.Integer),
        sa.column("root", sa.Text),
        sa.column("rel_path", sa.Text),
        sa.column("first_seen", sa.DateTime),
    )
    scores = sa.table(
        "scores",
        sa.column("id", sa.Integer),
        sa.column("photo_id", sa.Integer),
        sa.column("model_id", sa.String),
        sa.column("model_version", sa.String),
        sa.column("scored_at", sa.DateTime),
        sa.column("is_latest", sa.Boolean),
    )
    jobs = sa.table(
        "jobs",
        sa.column("id", sa.Integer),
        sa.column("photo_id", sa.Integer),
        sa.column("model_id", sa.String),
    )

    # Encoded paths join like the file names they encode ("/" is never escaped).
    by_file: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for row in bind.execute(sa.select(photos.c.id, photos.c.root, photos.c.rel_path)):
        by_file[posixpath.join(row.root, row.rel_path)].append((row.id, row.root))
    for rows in by_file.values():
        if len(rows) < 2:
            continue
        keep = min(rows, key=lambda r: (len(r[1]), r[0]))[0]
        others = [photo_id for photo_id, _ in rows if photo_id != keep]
        for other in others:
            _merge(bind, scores, jobs, keep, other)
            bind.execute(sa.delete(photos).where(photos.c.id == other))
        _mark_latest(bind, scores, keep)


def _merge(bind: sa.Connection, scores: sa.TableClause, jobs: sa.TableClause, keep: int, other: int) -> None:
    kept = {
        (r.model_id, r.model_version): r
        for r in bind.execute(sa.select(scores).where(scores.c.photo_id == keep))
    }
    for row in bind.execute(sa.select(scores).where(scores.c.photo_id == other)).all():
        twin = kept.get((row.model_id, row.model_version))
        if twin is None:
            bind.execute(sa.update(scores).where(scores.c.id == row.id).values(photo_id=keep))
        elif row.scored_at > twin.scored_at:  # the newer of two scores of one model version stays
            bind.execute(sa.delete(scores).where(scores.c.id == twin.id))
            bind.execute(sa.update(scores).where(scores.c.id == row.id).values(photo_id=keep))
        else:
            bind.execute(sa.delete(scores).where(scores.c.id == row.id))
    kept_jobs = set(bind.execute(sa.select(jobs.c.model_id).where(jobs.c.photo_id == keep)).scalars())
    for row in bind.execute(sa.select(jobs.c.id, jobs.c.model_id).where(jobs.c.photo_id == other)).all():
        if row.model_id in kept_jobs:
            bind.execute(sa.delete(jobs).where(jobs.c.id == row.id))
        else:
            bind.execute(sa.update(jobs).where(jobs.c.id == row.id).values(photo_id=keep))


def _mark_latest(bind: sa.Connection, scores: sa.TableClause, photo_id: int) -> None:
    newest: dict[str, tuple[object, int]] = {}
    rows = bind.execute(
        sa.select(scores.c.id, scores.c.model_id, scores.c.scored_at).where(scores.c.photo_id == photo_id)
    ).all()
    for row in rows:
        best = newest.get(row.model_id)
        if best is None or (row.scored_at, row.id) > best:
            newest[row.model_id] = (row.scored_at, row.id)
    for row in rows:
        bind.execute(
            sa.update(scores).where(scores.c.id == row.id).values(is_latest=newest[row.model_id][1] == row.id)
        )


def downgrade() -> None:
    """Merged rows stay merged: the second row was a bug, not data."""
