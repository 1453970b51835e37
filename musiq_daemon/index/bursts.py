"""Bursts in the index: the photos `musiqd cull` groups, their cached features, and the groups it made."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import ColumnElement, and_, delete, exists, false, select, true, update
from sqlalchemy.orm import Session

from musiq_daemon.cull import Shot, best_of, camera_and_time, perceptual_hash
from musiq_daemon.errors import MusiqError
from musiq_daemon.index.db import in_chunks
from musiq_daemon.index.models import MARKED, RECHECK, UNMARK, Burst, Photo, Score
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


def with_burst_mates(session: Session, model_id: str, shots: Sequence[Shot]) -> list[Shot]:
    """``shots`` and every present photo that shares a burst with one of them: a burst is always regrouped
    whole, never cut in two by a folder or a time window (its other part would keep a stale best)."""
    have = {shot.photo_id for shot in shots}
    bursts: set[int] = set()
    for chunk in in_chunks(sorted(have)):
        bursts.update(
            session.scalars(select(Photo.burst_id).where(Photo.id.in_(chunk), Photo.burst_id.is_not(None)))
        )
    out = list(shots)
    for chunk in in_chunks(sorted(bursts)):
        out += [
            m
            for m in load_shots(session, model_id, where=Photo.burst_id.in_(chunk))
            if m.photo_id not in have
        ]
    return out


def _release_vanished(session: Session, burst_ids: Sequence[int]) -> None:
    """The vanished photos of these bursts leave them. One musiqd marked best-of-burst is to be unmarked
    should it come back, and its features are read again then (it is grouped anew)."""
    for chunk in in_chunks(burst_ids):
        gone = and_(Photo.burst_id.in_(chunk), Photo.missing_since.is_not(None))
        session.execute(update(Photo).where(gone, Photo.best_keyword.in_(MARKED)).values(best_keyword=UNMARK))
        session.execute(update(Photo).where(gone).values(burst_id=None, phash=None))


def record_bursts(
    session: Session,
    considered: Sequence[Shot],
    groups: Sequence[Sequence[Shot]],
    model_id: str,
    *,
    replacing: Sequence[int] = (),
) -> list[Burst]:
    """Replace the bursts of the ``considered`` photos (and the bursts ``replacing``) by ``groups``; callers
    consider whole bursts (:func:`with_burst_mates`). A photo musiqd marked best-of-burst that is no longer a
    best becomes ``unmark`` (its keyword is to be taken away), one that is the best again ``recheck``; a new
    burst's best is to be seen to (``keyword_done`` false)."""
    ids = [shot.photo_id for shot in considered]
    old: set[int] = set(replacing)
    for chunk in in_chunks(ids):
        old.update(
            session.scalars(select(Photo.burst_id).where(Photo.id.in_(chunk), Photo.burst_id.is_not(None)))
        )
        session.execute(update(Photo).where(Photo.id.in_(chunk)).values(burst_id=None))
    _release_vanished(session, sorted(old))
    for chunk in in_chunks(sorted(old)):
        session.execute(delete(Burst).where(Burst.id.in_(chunk), ~exists().where(Photo.burst_id == Burst.id)))
    moment = datetime.now(UTC)
    made = []
    bests: set[int] = set()
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
            keyword_done=False,
        )
        session.add(burst)
        session.flush()
        for chunk in in_chunks([s.photo_id for s in group]):
            session.execute(update(Photo).where(Photo.id.in_(chunk)).values(burst_id=burst.id))
        if best is not None:
            bests.add(best.photo_id)
        made.append(burst)
    for chunk in in_chunks(ids):
        others = [i for i in chunk if i not in bests]
        again = [i for i in chunk if i in bests]
        if others:
            marked = and_(Photo.id.in_(others), Photo.best_keyword.in_(MARKED))
            session.execute(update(Photo).where(marked).values(best_keyword=UNMARK))
        if again:  # the keyword should still be there: looked at again when the burst is seen to
            unmarked = and_(Photo.id.in_(again), Photo.best_keyword == UNMARK)
            session.execute(update(Photo).where(unmarked).values(best_keyword=RECHECK))
    return made


#: Seconds around new photos in which `cull_new` regroups (with the whole bursts they touch).
WINDOW_S = 120.0
#: New photos grouped per call (the daemon calls it again while there are more).
BATCH = 200


def cull_new(
    session: Session,
    model_id: str,
    *,
    gap_s: float,
    max_distance: int,
    where: ColumnElement[bool] | None = None,
) -> tuple[int, list[Burst]]:
    """Group the photos scored since the last call with their neighbours in time (the daemon's culling as
    photos arrive): reads the features of up to :data:`BATCH` new photos (new files, new versions, and
    photos scored again: :func:`~musiq_daemon.index.records.record_results` has them read again, as a new
    score can change a burst's best), regroups every photo of the same camera within :data:`WINDOW_S` of
    them with the whole bursts they are in. Then the bursts that lost photos (vanished files) are regrouped
    from the photos left. ``where`` (a condition on Photo): only these photos are read and grouped (the
    daemon's roots: other photos of a shared index are not its to group). Returns (photos read or
    regrouped, bursts made)."""
    from musiq_daemon.cull import group_bursts

    scored = exists().where(Score.photo_id == Photo.id, Score.model_id == model_id, Score.is_latest.is_(True))
    unread = select(Photo.id).where(Photo.phash.is_(None), Photo.missing_since.is_(None), scored)
    new_ids = list(session.scalars((unread if where is None else unread.where(where)).limit(BATCH)))
    if not new_ids:
        return _regroup_depleted(session, model_id, gap_s=gap_s, max_distance=max_distance)
    fresh = load_shots(session, model_id, where=Photo.id.in_(new_ids))
    for shot in fresh:
        if shot.phash is None:  # unreadable: mark it read, or it would come back every time
            session.execute(
                update(Photo).where(Photo.id == shot.photo_id).values(phash=0, taken_at_ms=None)
            )  # never grouped: no capture time
    window_ms = round(WINDOW_S * 1000)
    nearby: dict[int, Shot] = {shot.photo_id: shot for shot in fresh}
    timed = [s for s in fresh if s.taken_ms is not None]
    for camera in {s.camera for s in timed}:
        times = [s.taken_ms for s in timed if s.camera == camera and s.taken_ms is not None]
        same_camera = Photo.camera.is_(None) if camera is None else Photo.camera == camera
        around = and_(
            same_camera,
            Photo.taken_at_ms >= min(times) - window_ms,
            Photo.taken_at_ms <= max(times) + window_ms,
            where if where is not None else true(),
        )
        for shot in load_shots(session, model_id, where=around):
            nearby[shot.photo_id] = shot
    considered = with_burst_mates(session, model_id, list(nearby.values()))
    groups = group_bursts(considered, gap_s=gap_s, max_distance=max_distance)
    return len(fresh), record_bursts(session, considered, groups, model_id)


def _regroup_depleted(
    session: Session, model_id: str, *, gap_s: float, max_distance: int
) -> tuple[int, list[Burst]]:
    """:func:`cull_new`'s second part: up to :data:`BATCH` bursts with vanished photos (found through the
    few vanished photos, not by reading every burst), regrouped from the photos left; a burst left with
    one photo, or none, is a burst no more."""
    from musiq_daemon.cull import group_bursts

    found = session.scalars(
        select(Photo.burst_id)
        .where(Photo.missing_since.is_not(None), Photo.burst_id.is_not(None))
        .order_by(Photo.burst_id)
        .limit(BATCH)
    )
    depleted = sorted({burst for burst in found if burst is not None})
    if not depleted:
        return 0, []
    _release_vanished(session, depleted)
    considered = []
    for chunk in in_chunks(depleted):
        considered += load_shots(session, model_id, where=Photo.burst_id.in_(chunk))
    groups = group_bursts(considered, gap_s=gap_s, max_distance=max_distance)
    return max(len(considered), 1), record_bursts(session, considered, groups, model_id, replacing=depleted)


@dataclass(frozen=True)
class PendingKeyword:
    """A photo whose ``MUSIQ|best-of-burst`` keyword may have to change."""

    photo: Photo
    best: bool  # whether the keyword must be there
    burst_id: int | None  # the burst whose best it is, to be marked done (None for a former best)


def pending_keywords(
    session: Session,
    *,
    best: bool,
    where: ColumnElement[bool] | None = None,
    after: int = 0,
    limit: int = 200,
    settled_before: datetime | None = None,
) -> tuple[list[PendingKeyword], int | None]:
    """The present photos whose ``MUSIQ|best-of-burst`` keyword may have to change, a page at a time, and
    where the next page starts (None after the last). ``best``: the best photo of each burst not yet seen
    to (``bursts.keyword_done``), in the order of the bursts, and with ``settled_before`` only the bursts
    decided before then (a burst still being copied in is regrouped again and again: marking each passing
    best would write files for nothing); else the photos musiqd marked that are no longer their burst's
    best (``unmark``, set by :func:`record_bursts`: a better shot joined, or the burst came apart). Both
    through an index: never a pass over every photo or every burst."""
    if best:
        # The bursts to do first (a page of them), then their photos: the database must not start from
        # the photos, which an "is not missing" condition would make it do.
        todo = (
            select(Burst.id, Burst.best_photo_id)
            .where(
                Burst.keyword_done == false(),
                Burst.best_photo_id.is_not(None),
                Burst.id > after,
                Burst.decided_at <= settled_before if settled_before is not None else true(),
            )
            .order_by(Burst.id)
            .limit(limit)
            .subquery()
        )
        # An outer join: a burst whose photo is left out still moves the page on.
        on = and_(
            Photo.id == todo.c.best_photo_id, Photo.burst_id == todo.c.id, Photo.missing_since.is_(None)
        )
        rows = session.execute(
            select(Photo, todo.c.id)
            .select_from(todo)
            .outerjoin(Photo, on if where is None else and_(on, where))
            .order_by(todo.c.id)
        ).all()
        keep = [PendingKeyword(photo, True, burst_id) for photo, burst_id in rows if photo is not None]
        return keep, (rows[-1][1] if len(rows) == limit else None)
    query = select(Photo).where(Photo.best_keyword == UNMARK, Photo.missing_since.is_(None), Photo.id > after)
    if where is not None:
        query = query.where(where)
    photos = list(session.scalars(query.order_by(Photo.id).limit(limit)))
    return [PendingKeyword(p, False, None) for p in photos], (photos[-1].id if len(photos) == limit else None)
