"""Reconciling a root with the index: the daemon's source of truth.

Watchers miss changes (network shares deliver no events, inotify runs out of watches, the daemon was not
running), so at start-up and every ``rescan_interval`` each root is walked and compared with the index:

* a file whose (size, mtime_ns) equals its row is unchanged: only ``last_seen`` is refreshed, in batches.
  The inode is not compared: NFS and SMB servers may renumber inodes across remounts, which would make a
  whole share look changed;
* a new file is recorded and queued for every configured model; one whose size matches a photo that is
  missing (or may turn out to be, later in this walk) is content-hashed first, and when the hash matches
  it keeps that photo's scores (a move or rename, also across roots);
* a changed file is queued again unless the new version is one musiqd wrote itself (its signature is in
  ``written_files``) or has the same content hash (someone else edited only metadata);
* a file modified within the last ``quiet_period`` may still be being written: it is handed to the
  watcher's settler (``defer``) instead;
* an indexed file that is gone gets ``missing_since``; rows are never deleted.

A root that is unavailable is reported and left alone: nothing in it is marked missing. Unavailable means:
it does not exist, is not a readable directory, the share that was mounted there is no longer mounted, or
it is empty (or holds no photo at all) while the index has photos there: an unmounted share's mount point
looks exactly like that. Folders that cannot be read during the walk (EIO, permissions) keep their photos
as they are for the same reason.

:func:`ingest_file` is the single path by which one file enters the index and the queue; the watcher and
``musiqd notify`` use it too.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from musiq_daemon.daemon.mounts import MountTable
from musiq_daemon.daemon.queue import adopt_moved, enqueue, follow_sidecars
from musiq_daemon.discover import PathFilter, walk
from musiq_daemon.errors import DecodeError
from musiq_daemon.index.db import in_chunks
from musiq_daemon.index.models import Job, Photo, WrittenFile
from musiq_daemon.index.paths import decode_path, encode_path
from musiq_daemon.index.records import find_photo, now, split_root, upsert_photo
from musiq_daemon.metadata.content_hash import content_hash_file
from musiq_daemon.metadata.safefile import FileSignature
from musiq_daemon.metadata.sidecar import move_sidecars

if TYPE_CHECKING:
    from musiq_daemon.config import Config
    from musiq_daemon.index.db import IndexDB

log = logging.getLogger("musiqd.scan")

#: New files per transaction: large enough that commits do not dominate, small enough that the worker
#: (and ``musiqd status``) see the first photos of a big backfill within a second.
BATCH: Final = 500
#: Changed files and possible moves per transaction: each takes a few ORM round trips (and maybe a hash).
SMALL_BATCH: Final = 50
Outcome = Literal["unchanged", "own-write", "same-content", "moved", "queued", "gone"]


# --- root availability -------------------------------------------------------------------------------------


def root_unavailable(root: Path, *, has_photos: bool, expected_mount: str | None = None) -> str | None:
    """Why ``root`` cannot be reconciled now, or None when it can.

    ``has_photos``: the index has present photos under it. ``expected_mount``: the mount point the root was
    on when the daemon started, when that was a separate filesystem (e.g. a network share).
    """
    try:
        info = root.stat()
    except OSError as exc:
        return f"cannot be read ({exc.strerror})"
    if not stat.S_ISDIR(info.st_mode):
        return "is not a directory"
    if not os.access(root, os.R_OK | os.X_OK):
        return "cannot be read (permission denied)"
    if expected_mount is not None and MountTable.read().mount_for(root).point != expected_mount:
        return f"the share mounted at {expected_mount} is not mounted"
    if has_photos:
        try:
            with os.scandir(root) as entries:
                empty = next(entries, None) is None
        except OSError as exc:
            return f"cannot be read ({exc.strerror})"
        if empty:
            return "is empty while the index has photos there (unmounted share?)"
    return None


def has_photos(session: Session, root: Path) -> bool:
    """The index has present (not missing) photos under ``root``. An index probe, not a count: it runs
    every few seconds on roots of tens of thousands of photos."""
    found = session.scalar(
        select(Photo.id).where(Photo.root == encode_path(root), Photo.missing_since.is_(None)).limit(1)
    )
    return found is not None


# --- one file ----------------------------------------------------------------------------------------------


def same_version(photo: Photo, info: os.stat_result) -> bool:
    """The row describes this version of the file (see the module doc for why the inode is not compared)."""
    return photo.missing_since is None and (photo.size, photo.mtime_ns) == (info.st_size, info.st_mtime_ns)


def _photo_row(session: Session, path: Path, roots: Sequence[Path]) -> Photo | None:
    return find_photo(session, path, roots=list(roots))  # also a row ``musiqd score`` keyed by folder


def own_write(session: Session, path: Path, info: os.stat_result) -> bool:
    """This exact version of ``path`` was written by musiqd (it recorded the signature after writing)."""
    row = session.scalars(
        select(WrittenFile).where(WrittenFile.path == encode_path(os.path.abspath(path)))
    ).first()
    return row is not None and FileSignature(row.dev, row.inode, row.size, row.mtime_ns) == (
        FileSignature.from_stat(info)
    )


def known_version(session: Session, path: Path, info: os.stat_result, roots: Sequence[Path]) -> bool:
    """Nothing to do for this version of ``path``: the index has it, or musiqd wrote it."""
    photo = _photo_row(session, path, roots)
    return (photo is not None and same_version(photo, info)) or own_write(session, path, info)


def ingest_file(
    session: Session,
    path: Path,
    *,
    roots: Sequence[Path],
    models: Sequence[str],
    content_hash: str | None = None,
    hash_new: bool = False,
) -> Outcome:
    """Record ``path`` in the index and queue it for ``models`` when its image content is new to the index.

    ``content_hash``: already computed by the caller (the settler's completeness check). Otherwise the
    hash is computed when it decides something: for a changed file whose previous hash is known, and for a
    new file when ``hash_new`` (a possible move). Returns what was done.
    """
    try:
        info = os.lstat(path)
    except OSError:
        return "gone"
    if not stat.S_ISREG(info.st_mode):  # symbolic links are not followed: they may point out of the root
        return "gone"
    photo = _photo_row(session, path, roots)
    if photo is not None and same_version(photo, info):
        return "unchanged"
    if photo is not None and own_write(session, path, info):
        upsert_photo(session, path, roots=list(roots))
        return "own-write"
    if content_hash is None and ((photo is not None and photo.content_hash) or (photo is None and hash_new)):
        content_hash = _hash_or_none(path)
    if photo is not None and content_hash is not None and photo.content_hash == content_hash:
        upsert_photo(session, path, roots=list(roots))  # a metadata edit by another program
        return "same-content"
    is_new = photo is None
    photo = upsert_photo(session, path, roots=list(roots))
    photo.content_hash = content_hash  # None when unknown: an older hash no longer describes the file
    old = adopt_moved(session, photo, content_hash) if is_new and content_hash is not None else None
    moved = old is not None
    if old is not None:  # the sidecars follow the photo (photo managers look for them by its name)
        old_path = Path(decode_path(old.root)) / decode_path(old.rel_path)
        follow_sidecars(session, photo, move_sidecars(old_path, path))
    # After a move only the models the old photo had no score of are queued (adopted jobs count as done).
    for model in models:
        enqueue(session, photo.id, model, force=not is_new)
    return "moved" if moved else "queued"


def _hash_or_none(path: Path) -> str | None:
    try:
        return content_hash_file(path)
    except DecodeError:  # incomplete or corrupt: the worker records the reason when it tries to score it
        return None


def mark_missing(session: Session, paths: Iterable[Path], roots: Sequence[Path]) -> int:
    """Mark the photos at ``paths`` missing when their files are really gone. Returns how many."""
    when, count = now(), 0
    for path in paths:
        if os.path.lexists(path):  # replaced meanwhile (an atomic save): not gone
            continue
        photo = _photo_row(session, path, roots)
        if photo is not None and photo.missing_since is None:
            photo.missing_since = when
            count += 1
    return count


def mark_missing_under(session: Session, directory: Path, roots: Sequence[Path]) -> int:
    """Mark every photo under a folder that was deleted or moved away missing. Returns how many."""
    if os.path.lexists(directory):
        return 0
    root, rel = split_root(directory, list(roots))
    prefix = encode_path(rel) + "/"
    result = session.execute(
        update(Photo)
        .where(
            Photo.root == encode_path(root),
            Photo.rel_path.startswith(prefix, autoescape=True),
            Photo.missing_since.is_(None),
        )
        .values(missing_since=now())
    )
    return int(getattr(result, "rowcount", 0) or 0)


# --- a whole root ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScanProgress:
    root: Path
    files: int  # photo files seen so far
    expected: int  # photos the index had under the root (an estimate of the total)


@dataclass
class ScanResult:
    root: Path
    files: int = 0
    new: int = 0
    changed: int = 0  # queued again (new content)
    unchanged: int = 0
    own_writes: int = 0  # changed by musiqd itself or only in metadata: not queued
    moved: int = 0  # kept the score of a missing photo
    missing: int = 0  # newly marked missing
    returned: int = 0  # missing photos found again unchanged
    deferred: int = 0  # still being written: handed to the settler
    unreadable: list[str] = field(default_factory=list)  # folders that could not be read
    unavailable: str | None = None  # why the root was skipped
    stopped: bool = False
    seconds: float = 0.0

    def summary(self) -> str:
        if self.unavailable is not None:
            return f"root {self.root} unavailable: skipped ({self.unavailable})"
        parts = [
            f"{self.files} photos",
            f"{self.new} new",
            f"{self.changed} changed",
            f"{self.moved} moved",
            f"{self.missing} missing",
        ]
        if self.returned:
            parts.append(f"{self.returned} back")
        if self.deferred:
            parts.append(f"{self.deferred} still being written")
        if self.unreadable:
            parts.append(f"{len(self.unreadable)} unreadable folders")
        state = " (stopped)" if self.stopped else ""
        return f"scanned {self.root}: {', '.join(parts)} in {self.seconds:.1f} s{state}"


@dataclass
class _Row:
    id: int
    size: int
    mtime_ns: int
    missing: bool


def scan_root(
    db: IndexDB,
    root: Path,
    config: Config,
    *,
    progress: Callable[[ScanProgress], None] | None = None,
    defer: Callable[[Path], None] | None = None,
    stop: threading.Event | None = None,
    expected_mount: str | None = None,
) -> ScanResult:
    """Reconcile ``root`` with the index (see the module doc). ``defer`` receives files that may still be
    being written (without it they are ingested at once); ``stop`` ends the walk early, without marking
    anything missing."""
    started = time.monotonic()
    root = Path(os.path.abspath(root))
    result = ScanResult(root)
    key_root = encode_path(root)
    roots = list(config.roots) or [root]
    if root not in roots:
        roots.append(root)
    with db.session() as session:
        rows = {
            rel: _Row(pid, size, mtime, missing is not None)
            for pid, rel, size, mtime, missing in session.execute(
                select(Photo.id, Photo.rel_path, Photo.size, Photo.mtime_ns, Photo.missing_since).where(
                    Photo.root == key_root
                )
            )
        }
        missing_sizes = set(
            session.scalars(
                select(Photo.size).where(Photo.missing_since.is_not(None), Photo.content_hash.is_not(None))
            )
        )
    present = sum(not r.missing for r in rows.values())
    reason = root_unavailable(root, has_photos=present > 0, expected_mount=expected_mount)
    if reason is not None:
        result.unavailable = reason
        result.seconds = time.monotonic() - started
        return result
    # A new file of the same size as an indexed one may be that photo moved: hashed once the walk has
    # shown which photos are gone.
    move_sizes = missing_sizes | {r.size for r in rows.values()}
    recent_ns = time.time_ns() - int(config.quiet_period * 1e9)
    path_filter = PathFilter.of(config)
    seen: set[int] = set()
    unchanged: list[int] = []
    returned: list[int] = []
    new: list[tuple[str, os.stat_result]] = []
    candidates: list[Path] = []
    changed: list[Path] = []

    def flush_new(force: bool = False) -> None:
        if new and (force or len(new) >= BATCH):
            result.new += _insert_new(db, root, new, config.models)
            new.clear()

    def unreadable(folder: str, rel: str, exc: OSError) -> None:
        log.warning("cannot read folder %s: %s", folder, exc.strerror)
        result.unreadable.append(rel)

    for found in walk(root, path_filter, on_error=unreadable, stop=stop):
        try:
            info = found.entry.stat(follow_symlinks=False)
        except OSError:  # vanished between listing and stat
            continue
        path, rel = Path(found.entry.path), found.rel
        result.files += 1
        if progress is not None and result.files % 1000 == 0:
            progress(ScanProgress(root, result.files, present))
        row = rows.get(encode_path(rel))
        if row is not None:
            seen.add(row.id)
            if (row.size, row.mtime_ns) == (info.st_size, info.st_mtime_ns):
                (returned if row.missing else unchanged).append(row.id)
                continue
        if defer is not None and info.st_mtime_ns > recent_ns:
            result.deferred += 1
            defer(path)
        elif row is not None:
            changed.append(path)
        elif info.st_size in move_sizes:
            candidates.append(path)
        else:
            new.append((rel, info))
            flush_new()
    result.stopped = stop is not None and stop.is_set()
    flush_new(force=True)
    if progress is not None:
        progress(ScanProgress(root, result.files, present))
    result.unchanged, result.returned = len(unchanged), len(returned)
    with db.session() as session:
        seen_at = now()
        for chunk in in_chunks(unchanged):
            session.execute(update(Photo).where(Photo.id.in_(chunk)).values(last_seen=seen_at))
        for chunk in in_chunks(returned):
            session.execute(
                update(Photo).where(Photo.id.in_(chunk)).values(last_seen=seen_at, missing_since=None)
            )
    if result.stopped:
        result.seconds = time.monotonic() - started
        return result
    if result.files == 0 and present > 0:
        # An unmounted share whose mount point holds something else (a placeholder file, lost+found).
        result.unavailable = f"no photos found where the index has {present}"
        result.seconds = time.monotonic() - started
        return result
    gone = [
        row.id
        for rel, row in rows.items()
        if row.id not in seen and not row.missing and not _under_any(rel, result.unreadable)
    ]
    with db.session() as session:
        when = now()
        for chunk in in_chunks(gone):
            session.execute(update(Photo).where(Photo.id.in_(chunk)).values(missing_since=when))
    result.missing = len(gone)
    for batch in in_chunks(candidates, SMALL_BATCH):
        with db.session() as session:
            for path in batch:
                _count(result, ingest_file(session, path, roots=roots, models=config.models, hash_new=True))
    for batch in in_chunks(changed, SMALL_BATCH):
        with db.session() as session:
            for path in batch:
                _count(result, ingest_file(session, path, roots=roots, models=config.models), changed=True)
    result.seconds = time.monotonic() - started
    return result


def _insert_new(
    db: IndexDB, root: Path, files: Sequence[tuple[str, os.stat_result]], models: Sequence[str]
) -> int:
    """Record and queue files new to the index, in one transaction of a few statements.

    A first scan meets tens of thousands of new files: statements for many rows at once take the SQLite
    write lock for milliseconds, where one ORM round trip per file (as :func:`ingest_file` makes) holds it
    for seconds per batch and starves the worker and the watcher. The rows are those
    :func:`~musiq_daemon.index.records.upsert_photo` makes for a file without a capture time (the worker
    adds it when it scores); a row or job that appeared meanwhile (the watcher, ``musiqd notify``) is left
    as it is. Returns the number of photos now recorded under those names.
    """
    key_root = encode_path(root)
    seen = now()
    photos = [
        {
            "root": key_root, "rel_path": encode_path(rel), "size": info.st_size,
            "mtime_ns": info.st_mtime_ns, "inode": info.st_ino, "first_seen": seen, "last_seen": seen,
            "taken_at": datetime.fromtimestamp(info.st_mtime, UTC),
        }
        for rel, info in files
    ]  # fmt: skip
    with db.session() as session:
        session.execute(
            _insert(session, Photo).on_conflict_do_nothing(index_elements=["root", "rel_path"]), photos
        )
        ids = session.scalars(
            select(Photo.id).where(
                Photo.root == key_root, Photo.rel_path.in_([p["rel_path"] for p in photos])
            )
        ).all()
        jobs = [
            {"photo_id": photo_id, "model_id": model, "state": "pending", "attempts": 0,
             "created_at": seen, "updated_at": seen}
            for photo_id in ids
            for model in models
        ]  # fmt: skip
        if jobs:
            session.execute(
                _insert(session, Job).on_conflict_do_nothing(index_elements=["photo_id", "model_id"]), jobs
            )
    return len(ids)


def _insert(session: Session, model: type[Photo] | type[Job]) -> sqlite.Insert | postgresql.Insert:
    """The dialect's INSERT, for ON CONFLICT DO NOTHING."""
    if session.get_bind().dialect.name == "postgresql":
        return postgresql.insert(model)
    return sqlite.insert(model)


def _count(result: ScanResult, outcome: Outcome, *, changed: bool = False) -> None:
    if outcome == "queued":
        if changed:
            result.changed += 1
        else:
            result.new += 1
    elif outcome == "moved":
        result.moved += 1
    elif outcome in ("own-write", "same-content"):
        result.own_writes += 1


def _under_any(rel: str, folders: Sequence[str]) -> bool:
    """``rel`` (encode_path form) lies under one of ``folders`` ("" is the root itself)."""
    return any(folder == "" or rel.startswith(encode_path(folder) + "/") for folder in folders)
