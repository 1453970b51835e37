"""Reading the index: the queries behind ``musiqd query`` and ``musiqd stats``, usable from Python.

>>> from musiq_daemon.index import open_index, ScoreQuery, run_query
>>> db = open_index()
>>> for row in run_query(db, ScoreQuery(model="koniq", min_score=4, limit=100)):
...     print(row.path, row.score)
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Integer, Select, and_, case, cast, false, func, or_, select
from sqlalchemy.orm import Session, aliased

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.errors import UsageError
from musiq_daemon.index.db import IndexDB
from musiq_daemon.index.models import Job, Photo, Score
from musiq_daemon.index.paths import decode_path, encode_path

#: Sort keys and their default direction (best, A-Z and newest first).
SORT_KEYS = {"score": "-", "path": "+", "date": "-"}


@dataclass(frozen=True)
class ScoreQuery:
    """What ``musiqd query`` asks. Bounds are inclusive and on the model's reported scale."""

    model: str
    min_score: float | None = None
    max_score: float | None = None
    under: Path | None = None
    since: datetime | None = None  # on the photo's date (capture time when known, else file time)
    until: datetime | None = None
    missing: bool = False  # photos not yet scored by this model
    failed: bool = False  # photos whose scoring by this model failed
    sort: str = "score"  # score|path|date, optionally suffixed + (ascending) or - (descending)
    limit: int | None = None
    include_vanished: bool = False  # also photos whose file has disappeared

    def validate(self) -> None:
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise UsageError(f"--min {self.min_score:g} is above --max {self.max_score:g}: swap them")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise UsageError("--since is after --until: swap them")
        if self.missing and self.failed:
            raise UsageError("--missing and --failed exclude each other: choose one")
        if (self.missing or self.failed) and (self.min_score is not None or self.max_score is not None):
            raise UsageError("--min/--max need scores: they cannot be combined with --missing or --failed")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1 (got {self.limit})")
        parse_sort(self.sort)


def parse_sort(text: str) -> tuple[str, bool]:
    """``score-`` -> ("score", descending=True). Plain keys use their natural direction."""
    key, direction = text.rstrip("+-"), text[len(text.rstrip("+-")) :]
    if key not in SORT_KEYS or direction not in ("", "+", "-"):
        raise UsageError(f"unknown sort '{text}': use score, path or date, optionally followed by + or -")
    return key, (direction or SORT_KEYS[key]) == "-"


@dataclass(frozen=True)
class ResultRow:
    """One line of ``musiqd query`` output. Field names are the stable JSON/CSV columns."""

    path: str
    score: float | None
    raw: float | None
    model: str
    model_version: str | None
    variant: str | None
    resolution_policy: str | None
    scored_at: datetime | None
    date: datetime | None
    width: int | None
    height: int | None
    format: str | None
    content_hash: str | None
    error: str | None = None

    FIELDS = (
        "path", "score", "raw", "model", "model_version", "variant", "resolution_policy", "scored_at",
        "date", "width", "height", "format", "content_hash", "error",
    )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.FIELDS:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def under_condition(db: IndexDB, under: Path) -> ColumnElement[bool]:
    """Photos at or below ``under`` (absolute, or relative to the current directory)."""
    target = Path(os.path.abspath(under))
    encoded = encode_path(target)
    with db.session() as session:
        roots = list(session.scalars(select(Photo.root).distinct()))
    terms: list[ColumnElement[bool]] = [
        Photo.root == encoded,
        Photo.root.startswith(encoded.rstrip("/") + "/", autoescape=True),
    ]
    for root in roots:
        root_path = Path(decode_path(root))
        if target != root_path and target.is_relative_to(root_path):
            rel = encode_path(target.relative_to(root_path))
            terms.append(
                and_(
                    Photo.root == root,
                    or_(Photo.rel_path == rel, Photo.rel_path.startswith(rel + "/", autoescape=True)),
                )
            )
    return or_(*terms) if terms else false()


def _statement(db: IndexDB, q: ScoreQuery, *, paths_only: bool = False) -> Select[*tuple[Any, ...]]:
    latest = aliased(Score)
    job = aliased(Job)
    on_score = and_(latest.photo_id == Photo.id, latest.model_id == q.model, latest.is_latest.is_(True))
    on_job = and_(job.photo_id == Photo.id, job.model_id == q.model)
    # Plain columns, not ORM entities: a full export of a million rows must not build three objects a row.
    stmt = select(Photo.root, Photo.rel_path)
    if not paths_only:
        stmt = stmt.add_columns(
            latest.score, latest.raw, latest.model_version, latest.variant, latest.resolution_policy,
            latest.scored_at, Photo.taken_at, Photo.width, Photo.height, Photo.format, Photo.content_hash,
            job.last_error,
        )  # fmt: skip
    # Each form starts from the table its filter narrows, so the planner can use that table's index.
    if q.missing:
        stmt = stmt.select_from(Photo).outerjoin(latest, on_score).outerjoin(job, on_job)
        stmt = stmt.where(latest.id.is_(None))
    elif q.failed:
        stmt = stmt.select_from(job).join(Photo, on_job).outerjoin(latest, on_score)
        stmt = stmt.where(job.state == "failed")
    else:
        stmt = stmt.select_from(latest).join(Photo, on_score).outerjoin(job, on_job)
        if q.min_score is not None:
            stmt = stmt.where(latest.score >= q.min_score)
        if q.max_score is not None:
            stmt = stmt.where(latest.score <= q.max_score)
    if not q.include_vanished:
        stmt = stmt.where(Photo.missing_since.is_(None))
    if q.under is not None:
        stmt = stmt.where(under_condition(db, q.under))
    if q.since is not None:
        stmt = stmt.where(Photo.taken_at >= q.since)
    if q.until is not None:
        stmt = stmt.where(Photo.taken_at <= q.until)
    key, descending = parse_sort(q.sort)
    order: list[ColumnElement[Any]]
    if key == "score" and not (q.missing or q.failed):
        order = [latest.score.desc() if descending else latest.score.asc()]
    elif key == "date":
        order = [Photo.taken_at.desc() if descending else Photo.taken_at.asc()]
    else:
        order = (
            [Photo.root.desc(), Photo.rel_path.desc()]
            if descending
            else [Photo.root.asc(), Photo.rel_path.asc()]
        )
    stmt = stmt.order_by(*order, Photo.id)
    if q.limit is not None:
        stmt = stmt.limit(q.limit)
    return stmt


def iter_paths(db: IndexDB, q: ScoreQuery, *, batch: int = 5000) -> Iterator[str]:
    """Only the matching paths, in order: the fast form of ``--format paths`` (no other column is read)."""
    q.validate()
    with db.engine.connect() as conn:
        for root, rel in conn.execution_options(yield_per=batch).execute(_statement(db, q, paths_only=True)):
            yield decode_path(root.rstrip("/") + "/" + rel)


def run_query(db: IndexDB, q: ScoreQuery, *, batch: int = 2000) -> Iterator[ResultRow]:
    """Stream the matching photos (constant memory, also for a million rows)."""
    q.validate()
    stmt = _statement(db, q)
    model = q.model
    with db.engine.connect() as conn:
        result = conn.execution_options(yield_per=batch).execute(stmt)
        for root, rel, *scored, date, width, height, fmt, chash, error in result:
            score, raw, version, variant, policy, scored_at = scored
            yield ResultRow(
                decode_path(root.rstrip("/") + "/" + rel), score, raw, model, version, variant, policy,
                scored_at, date, width, height, fmt, chash, error,
            )  # fmt: skip


@dataclass(frozen=True)
class ModelStats:
    model: str
    scored: int
    pending: int
    failed: int
    scale: tuple[float, float]
    histogram: list[tuple[float, float, int]] = field(default_factory=list)  # (from, to, count)


@dataclass(frozen=True)
class IndexStats:
    photos: int
    vanished: int
    models: list[ModelStats]


def _counts(session: Session, stmt: Select[*tuple[Any, ...]]) -> dict[Any, int]:
    return {key: int(count) for key, count in session.execute(stmt).all()}


def stats(db: IndexDB, *, bins: int = 16) -> IndexStats:
    """Counts per model, queue state, and a score histogram per model (bins across the model's scale).

    Scores of photos that vanished from disk do not count. They are few, so each figure is computed over
    all latest scores (a covering-index scan, fast on millions of rows) minus the vanished photos' scores,
    which are fetched through the photo index and binned here, instead of joining every score to its photo.
    """
    catalogue = load_catalogue()
    latest = Score.is_latest.is_(True)
    vanished_ids = select(Photo.id).where(Photo.missing_since.is_not(None))
    with db.session() as session:
        photos = session.scalar(select(func.count()).select_from(Photo).where(Photo.missing_since.is_(None)))
        vanished = session.scalar(
            select(func.count()).select_from(Photo).where(Photo.missing_since.is_not(None))
        )
        per_model = _counts(
            session, select(Score.model_id, func.count()).where(latest).group_by(Score.model_id)
        )
        gone_scores = session.execute(
            select(Score.model_id, Score.score).where(latest, Score.photo_id.in_(vanished_ids))
        ).all()
        queued: dict[str, dict[str, int]] = {}
        for job_model, job_state, count in session.execute(
            select(Job.model_id, Job.state, func.count())
            .where(Job.state.in_(("pending", "running", "failed")))
            .group_by(Job.model_id, Job.state)
        ).all():
            queued.setdefault(job_model, {})[job_state] = int(count)
        models = []
        for model_id in sorted(set(per_model) | set(queued)):
            spec = catalogue.models.get(model_id)
            lo, hi = (spec.scale_min, spec.scale_max) if spec else (1.0, 5.0)
            width = (hi - lo) / bins
            # Portable bucketing (SQLite and PostgreSQL): the top edge belongs to the last bin.
            bucket = case(
                (Score.score >= hi, bins - 1), else_=cast(func.floor((Score.score - lo) / width), Integer)
            )
            counts = _counts(
                session,
                select(bucket, func.count()).where(Score.model_id == model_id, latest).group_by(bucket),
            )
            gone = [score for m, score in gone_scores if m == model_id]
            for score in gone:  # the same arithmetic as the SQL above, in the same double precision
                i = bins - 1 if score >= hi else math.floor((score - lo) / width)
                counts[i] = counts.get(i, 0) - 1
            histogram = [(lo + i * width, lo + (i + 1) * width, counts.get(i, 0)) for i in range(bins)]
            waiting = queued.get(model_id, {})
            models.append(
                ModelStats(
                    model_id,
                    per_model.get(model_id, 0) - len(gone),
                    waiting.get("pending", 0) + waiting.get("running", 0),
                    waiting.get("failed", 0),
                    (lo, hi),
                    histogram,
                )
            )
    return IndexStats(int(photos or 0), int(vanished or 0), models)
