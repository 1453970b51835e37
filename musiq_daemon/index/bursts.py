"""Bursts in the index: the photos `musiqd cull` groups, their cached features, and the groups it made."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import ColumnElement, and_, delete, exists, func, or_, select, update
from sqlalchemy.orm import Session

from musiq_daemon.cull import Shot, best_of, camera_and_time, perceptual_hash
from musiq_daemon.errors import MusiqError
from musiq_daemon.index.models import ADDED, REMOVED, Burst, Photo, Score
from musiq_daemon.index.paths import decode_path

log = logging.getLogger("musiqd.cull")


def load_shots(
    session: Session,
    model_id: str,
    *,
    where: ColumnElement[bool] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Shot]:
    """Every present photo (matching ``where``, a condition on Photo) with its latest score of
    ``model_id``; camera, capture time and perceptual hash are read from the file where the index has none
    for this version of it, and kept."""
    query = (
        select(Photo, Score.score)
        .outerjoin(
            Score, and_(Score.photo_id == Photo.id, Score.model_id == model_id, Score.is_latest.is_(True))
        )
        .where(Photo.missing_since.is_(None))
        .order_by(Photo.id)
    )
    if where is not None:
        query = query.where(where)
    rows = session.execute(query).all()
    shots = []
    for number, (photo, score) in enumerate(rows, 1):
        path = Path(decode_path(photo.root)) / decode_path(photo.rel_path)
        if photo.phash is None:
            try:
                photo.camera, photo.taken_at_ms = camera_and_time(path)
                photo.phash = perceptual_hash(path)
            except (MusiqError, OSError) as exc:
                log.info("%s: not grouped (%s)", path, exc)
        if progress is not None:
            progress(number, len(rows))
        shots.append(Shot(photo.id, path, photo.camera, photo.taken_at_ms, photo.phash, score))
    session.flush()
    return shots


def record_bursts(
    session: Session, considered: Sequence[Shot], groups: Sequence[Sequence[Shot]], model_id: str
) -> list[Burst]:
    """Replace the bursts of the ``considered`` photos by ``groups`` (bursts of other photos stay)."""
    ids = [shot.photo_id for shot in considered]
    for start in range(0, len(ids), 500):
        session.execute(update(Photo).where(Photo.id.in_(ids[start : start + 500])).values(burst_id=None))
    session.execute(delete(Burst).where(~exists().where(Photo.burst_id == Burst.id)))
    moment = datetime.now(UTC)
    made = []
    for group in groups:
        best = best_of(group)
        first, last = group[0].taken_ms, group[-1].taken_ms
        burst = Burst(
            camera=group[0].camera,
            first_taken=datetime.fromtimestamp(first / 1000, UTC) if first is not None else None,
            last_taken=datetime.fromtimestamp(last / 1000, UTC) if last is not None else None,
            size=len(group),
            model_id=model_id,
            best_photo_id=best.photo_id if best is not None else None,
            decided_at=moment,
        )
        session.add(burst)
        session.flush()
        session.execute(
            update(Photo).where(Photo.id.in_([s.photo_id for s in group])).values(burst_id=burst.id)
        )
        made.append(burst)
    return made


#: Seconds around new photos in which `cull_new` regroups (a burst running longer is split at its edge).
WINDOW_S = 120.0
#: New photos grouped per call (the daemon calls it again while there are more).
BATCH = 200


def cull_new(session: Session, model_id: str, *, gap_s: float, max_distance: int) -> tuple[int, list[Burst]]:
    """Group the photos scored since the last call with their neighbours in time (the daemon's culling as
    photos arrive): reads the features of up to :data:`BATCH` new photos, regroups every photo of the same
    camera within :data:`WINDOW_S` of them. Then regroups the bursts that went stale: their best photo
    vanished, or one of them was scored again since the burst was decided (a new model version can change
    which is best, without changing the file). Returns (photos read or regrouped, bursts made)."""
    from musiq_daemon.cull import group_bursts

    scored = exists().where(Score.photo_id == Photo.id, Score.model_id == model_id, Score.is_latest.is_(True))
    new_ids = list(
        session.scalars(
            select(Photo.id).where(Photo.phash.is_(None), Photo.missing_since.is_(None), scored).limit(BATCH)
        )
    )
    if not new_ids:
        return _regroup_stale(session, model_id, gap_s=gap_s, max_distance=max_distance)
    fresh = load_shots(session, model_id, where=Photo.id.in_(new_ids))
    for shot in fresh:
        if shot.phash is None:  # unreadable: mark it read, or it would come back every time
            session.execute(
                update(Photo).where(Photo.id == shot.photo_id).values(phash=0, taken_at_ms=None)
            )  # never grouped: no capture time
    window_ms = round(WINDOW_S * 1000)
    nearby: dict[int, Shot] = {}
    timed = [s for s in fresh if s.taken_ms is not None]
    for camera in {s.camera for s in timed}:
        times = [s.taken_ms for s in timed if s.camera == camera and s.taken_ms is not None]
        same_camera = Photo.camera.is_(None) if camera is None else Photo.camera == camera
        around = and_(
            same_camera,
            Photo.taken_at_ms >= min(times) - window_ms,
            Photo.taken_at_ms <= max(times) + window_ms,
        )
        for shot in load_shots(session, model_id, where=around):
            nearby[shot.photo_id] = shot
    considered = list(nearby.values())
    groups = group_bursts(considered, gap_s=gap_s, max_distance=max_distance)
    return len(fresh), record_bursts(session, considered, groups, model_id)


def _regroup_stale(
    session: Session, model_id: str, *, gap_s: float, max_distance: int
) -> tuple[int, list[Burst]]:
    """:func:`cull_new`'s second part: up to :data:`BATCH` stale bursts, regrouped from their present
    photos (a burst left with one photo is a burst no more)."""
    from musiq_daemon.cull import group_bursts

    best_gone = exists().where(Photo.id == Burst.best_photo_id, Photo.missing_since.is_not(None))
    rescored = exists().where(
        Photo.burst_id == Burst.id,
        Score.photo_id == Photo.id,
        Score.model_id == model_id,
        Score.is_latest.is_(True),
        Score.scored_at > Burst.decided_at,
    )
    stale = list(session.scalars(select(Burst.id).where(or_(best_gone, rescored)).limit(BATCH)))
    if not stale:
        return 0, []
    session.execute(
        update(Photo).where(Photo.burst_id.in_(stale), Photo.missing_since.is_not(None)).values(burst_id=None)
    )  # gone: no longer part of any burst
    considered = load_shots(session, model_id, where=Photo.burst_id.in_(stale))
    groups = group_bursts(considered, gap_s=gap_s, max_distance=max_distance)
    made = record_bursts(session, considered, groups, model_id)
    # A score stamped later than now (another machine's clock ahead) must not leave the burst stale forever.
    latest = session.scalar(
        select(func.max(Score.scored_at)).where(
            Score.photo_id.in_([s.photo_id for s in considered] or [-1]),
            Score.model_id == model_id,
            Score.is_latest.is_(True),
        )
    )
    for burst in made:
        if latest is not None and latest > burst.decided_at:
            burst.decided_at = latest
    session.flush()
    return len(considered), made


def pending_keywords(
    session: Session,
    *,
    where: ColumnElement[bool] | None = None,
    after_id: int = 0,
    limit: int | None = None,
) -> list[tuple[Photo, bool]]:
    """The present photos (with ids above ``after_id``, in id order) whose ``MUSIQ|best-of-burst`` keyword
    must change, each with whether it must be there: the best of a burst that musiqd has not marked yet,
    and the photos it marked that are no longer their burst's best (a better shot joined, or the burst came
    apart). A photo whose keyword is the user's is never one of them."""
    is_best = exists().where(Burst.id == Photo.burst_id, Burst.best_photo_id == Photo.id)
    query = (
        select(Photo, is_best)
        .where(
            Photo.missing_since.is_(None),
            Photo.id > after_id,
            or_(
                and_(is_best, or_(Photo.best_keyword.is_(None), Photo.best_keyword == REMOVED)),
                and_(Photo.best_keyword == ADDED, ~is_best),
            ),
        )
        .order_by(Photo.id)
    )
    if where is not None:
        query = query.where(where)
    if limit is not None:
        query = query.limit(limit)
    return [(photo, bool(best)) for photo, best in session.execute(query).all()]
