"""``musiqd stats``: counts per model, the queue, and a score histogram per model."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Integer, Select, case, cast, func, select
from sqlalchemy.orm import Session

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.index.db import IndexDB
from musiq_daemon.index.models import MARKED, Burst, Job, Photo, Score


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
    bursts: int = 0  # groups `musiqd cull` made
    in_bursts: int = 0  # photos in them
    marked: int = 0  # photos that hold musiqd's best-of-burst keyword


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
        bursts = session.scalar(select(func.count()).select_from(Burst)) or 0
        in_bursts = session.scalar(
            select(func.count())
            .select_from(Photo)
            .where(Photo.burst_id.is_not(None), Photo.missing_since.is_(None))
        )
        marked = session.scalar(
            select(func.count())
            .select_from(Photo)
            .where(Photo.best_keyword.in_(MARKED), Photo.missing_since.is_(None))
        )
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
    return IndexStats(
        int(photos or 0), int(vanished or 0), models, int(bursts), int(in_bursts or 0), int(marked or 0)
    )
