"""Writing to the index: photos as they are seen, scores as they are made, files as musiqd writes them."""

from __future__ import annotations

import os
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import and_, or_, select, update
from sqlalchemy.orm import Session

from musiq_daemon.errors import MusiqError
from musiq_daemon.index.models import ADDED, RECHECK, Photo, Score, WrittenFile
from musiq_daemon.index.paths import encode_path
from musiq_daemon.metadata.capture import capture_time
from musiq_daemon.metadata.content_hash import content_hash_file
from musiq_daemon.metadata.safefile import FileSignature
from musiq_daemon.paths import SAME_PATHS, PathMap
from musiq_daemon.records import ScoreRecord

if TYPE_CHECKING:
    from musiq_daemon.metadata.writer import WriteResult


#: What makes two scores of a photo the same: model, model version, variant and resolution policy.
ScoreKey = tuple[str, str, str, str]


def score_key(record: ScoreRecord) -> ScoreKey:
    return (record.model_id, record.model_version, record.variant, record.resolution_policy)


def now() -> datetime:
    return datetime.now(UTC)


def split_root(path: Path, roots: list[Path] | None = None) -> tuple[Path, Path]:
    """(root, relative path) of a file: the longest configured root containing it, else its folder."""
    path = Path(os.path.abspath(path))
    for root in sorted(roots or [], key=lambda r: len(str(r)), reverse=True):
        root = Path(os.path.abspath(root))
        if path.is_relative_to(root) and path != root:
            return root, path.relative_to(root)
    return path.parent, Path(path.name)


def find_photo(session: Session, path: Path, *, roots: list[Path] | None = None) -> Photo | None:
    """The row of the photo at ``path``, however it was keyed before.

    A photo has one identity: its absolute path. It is stored as (root, relative path), the root being the
    configured root it lies in, else its folder (:func:`split_root`); ``musiqd score`` on a sub-folder and
    the daemon watching a root above it therefore see the same file under two splits. The row is found
    under any split (one query over the file's ancestors) and keeps the outermost root: a row keyed by a
    folder is re-keyed to a root above it, never the other way round.
    """
    root, rel = split_root(path, roots)
    key_root, key_rel = encode_path(root), encode_path(rel)
    found = session.scalars(select(Photo).where(Photo.root == key_root, Photo.rel_path == key_rel)).first()
    if found is not None:  # the usual case: one indexed lookup
        return found
    absolute = root / rel
    splits = [(encode_path(a), encode_path(absolute.relative_to(a))) for a in absolute.parents]
    rows = session.scalars(
        select(Photo).where(or_(*(and_(Photo.root == r, Photo.rel_path == p) for r, p in splits)))
    ).all()
    if not rows:
        return None
    photo = min(rows, key=lambda row: len(row.root))  # the outermost root (several only in old indexes)
    if len(key_root) < len(photo.root):  # a root above the row's: re-key it there
        photo.root, photo.rel_path = key_root, key_rel
    return photo


def upsert_photo(
    session: Session,
    path: Path,
    *,
    roots: list[Path] | None = None,
    content_hash: str | None = None,
    fmt: str | None = None,
    size_hw: tuple[int, int] | None = None,
    taken_at: datetime | None = None,
    files: PathMap = SAME_PATHS,
) -> Photo:
    """The photo row for ``path`` (as the index stores it), created or refreshed from the file's current
    stat, read where ``files`` says this machine sees it (see :func:`find_photo` for which row is the
    photo's)."""
    root, rel = split_root(path, roots)
    st = files.local(path).stat()
    key_root, key_rel = encode_path(root), encode_path(rel)
    photo = find_photo(session, path, roots=roots)
    seen = now()
    if photo is None:
        photo = Photo(
            root=key_root, rel_path=key_rel, first_seen=seen, size=st.st_size, mtime_ns=st.st_mtime_ns
        )
        session.add(photo)
    if (photo.size, photo.mtime_ns) != (st.st_size, st.st_mtime_ns):
        photo.camera = photo.taken_at_ms = photo.phash = None  # another version: `cull` reads it again
        if photo.best_keyword == ADDED:
            photo.best_keyword = RECHECK  # another program may have dropped the keyword: look again
    photo.size, photo.mtime_ns, photo.inode = st.st_size, st.st_mtime_ns, st.st_ino
    photo.last_seen, photo.missing_since = seen, None
    if content_hash is not None:
        photo.content_hash = content_hash
    if fmt is not None:
        photo.format = fmt
    if size_hw is not None:
        photo.height, photo.width = size_hw
    if taken_at is not None:
        photo.taken_at = taken_at
    elif photo.taken_at is None:  # no capture time in the file: the file's own time stands in
        photo.taken_at = datetime.fromtimestamp(st.st_mtime, UTC)
    session.flush()
    return photo


def record_score(
    session: Session,
    photo: Photo,
    record: ScoreRecord,
    *,
    written_to: str | None = None,
    written_path: Path | None = None,
    rating_written: int | None = None,
) -> Score:
    """Store ``record`` as the latest score of ``photo`` for its model (one row per model version)."""
    session.execute(
        update(Score)
        .where(Score.photo_id == photo.id, Score.model_id == record.model_id, Score.is_latest.is_(True))
        .values(is_latest=False)
    )
    row = session.scalars(
        select(Score).where(
            Score.photo_id == photo.id,
            Score.model_id == record.model_id,
            Score.model_version == record.model_version,
        )
    ).first()
    if row is None:
        row = Score(photo_id=photo.id, model_id=record.model_id, model_version=record.model_version)
        session.add(row)
    row.variant = record.variant
    row.model_sha256 = record.model_sha256
    row.is_latest = True
    row.score, row.raw = record.score, record.raw
    row.scale_min, row.scale_max = record.scale_min, record.scale_max
    row.resolution_policy = record.resolution_policy
    row.device = record.device
    row.num_tokens = record.num_tokens
    row.duration_s = record.duration
    row.source = record.source
    row.scored_at = datetime.fromisoformat(record.scored_at)
    row.written_to = written_to
    row.written_path = encode_path(written_path) if written_path is not None else None
    row.rating_written = rating_written
    session.flush()
    return row


def record_written_file(session: Session, path: Path, signature: FileSignature) -> None:
    """Remember the exact version of a file musiqd wrote, so its change events are recognised as ours."""
    key = encode_path(os.path.abspath(path))
    row = session.scalars(select(WrittenFile).where(WrittenFile.path == key)).first()
    if row is None:
        row = WrittenFile(path=key, dev=0, inode=0, size=0, mtime_ns=0, written_at=now())
        session.add(row)
    row.dev, row.inode, row.size, row.mtime_ns = (
        signature.dev,
        signature.inode,
        signature.size,
        signature.mtime_ns,
    )
    row.written_at = now()
    session.flush()


def last_rating_written(
    session: Session, path: Path, model_id: str, *, roots: list[Path] | None = None
) -> int | None:
    """The stars musiqd last wrote for the photo at ``path`` with ``model_id``'s score, None when it never
    wrote any. The writer uses it to recognise its own stars in a file a photo manager rewrote without
    ``musiqd:RatingWritten`` (see :func:`musiq_daemon.metadata.writer.write_score`)."""
    photo = find_photo(session, path, roots=roots)
    if photo is None:
        return None
    stars: int | None = session.scalars(
        select(Score.rating_written)
        .where(
            Score.photo_id == photo.id,
            Score.model_id == model_id,
            Score.rating_written.is_not(None),
        )
        .order_by(Score.scored_at.desc(), Score.id.desc())
        .limit(1)
    ).first()
    return stars


def record_result(
    session: Session,
    path: Path,
    record: ScoreRecord,
    written: WriteResult | None,
    *,
    roots: list[Path] | None = None,
) -> Photo:
    """:func:`record_results` for one model's score."""
    return record_results(session, path, [record], written, roots=roots)


def record_results(
    session: Session,
    path: Path,
    records: Sequence[ScoreRecord],
    written: WriteResult | None,
    *,
    roots: list[Path] | None = None,
    files: PathMap = SAME_PATHS,
) -> Photo:
    """Everything one scoring of a photo leaves in the index, in the caller's transaction: the photo (stat,
    content hash, size, capture time), each model's score with where it was written (the stars with the
    score of the model that set them), and the signature of every file musiqd wrote (so the watcher
    recognises its own writes). Used by the pipeline for ``musiqd score`` and the daemon alike."""
    local = files.local(path)
    chash = written.content_hash if written is not None else None
    if chash is None:
        try:
            chash = content_hash_file(local)
        except MusiqError:
            chash = None  # the score stands; only move detection is lost for this photo
    first = records[0]
    photo = upsert_photo(
        session,
        path,
        roots=roots,
        content_hash=chash,
        fmt=first.format,
        size_hw=(first.stored_size[1], first.stored_size[0]),
        taken_at=capture_time(local),
        files=files,
    )
    rating_model = written.rating_model if written is not None else None
    for record in records:
        record_score(
            session,
            photo,
            record,
            written_to=written.target if written is not None else "none",
            written_path=files.index(written.path) if written is not None and written.path else None,
            rating_written=(
                written.rating_written
                if written is not None and (rating_model is None or rating_model == record.model_id)
                else None
            ),
        )
    if photo.burst_id is not None:
        photo.phash = None  # a new score can change the burst's best: the daemon's culling regroups it
    for file in written.files if written is not None else ():
        if file.changed:
            record_written_file(session, files.index(file.path), file.signature)
    return photo


def already_scored(
    session: Session,
    path: Path,
    wanted: Sequence[ScoreKey],
    *,
    roots: list[Path] | None = None,
    written: bool = False,
) -> bool:
    """Whether the photo at ``path``, as it is now, has a latest score for every (model, version, variant,
    resolution policy) in ``wanted`` (with ``written``: one that was also written into the photo or its
    sidecar, so that ``score --write`` after a plain ``score``, or after a write that failed, writes). The
    file counts as unchanged when its size and modification time are those recorded (musiqd records them
    after its own writes), else when its content hash is."""
    photo = find_photo(session, path, roots=roots)
    if photo is None:
        return False
    info = path.stat()
    if (info.st_size, info.st_mtime_ns) != (photo.size, photo.mtime_ns):
        try:
            if photo.content_hash is None or content_hash_file(path) != photo.content_hash:
                return False
        except MusiqError:
            return False
    latest = select(Score.model_id, Score.model_version, Score.variant, Score.resolution_policy).where(
        Score.photo_id == photo.id, Score.is_latest.is_(True)
    )
    if written:
        latest = latest.where(Score.written_to.in_(("embedded", "sidecar")))
    rows = session.execute(latest)
    have = {(r.model_id, r.model_version, r.variant, r.resolution_policy) for r in rows}
    return all(key in have for key in wanted)
