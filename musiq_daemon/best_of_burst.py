"""Mark the best photo of each burst: bring every photo's ``MUSIQ|best-of-burst`` keyword in line with the
bursts in the index (`musiqd cull --write`, and the daemon after it groups new photos).

>>> outcome = mark_best_photos(db, config.write)
>>> outcome.added, outcome.removed, outcome.refused

The photos come from :func:`~musiq_daemon.index.bursts.pending_keywords`: each burst's best that is not
marked yet, and the photos musiqd marked that are no longer their burst's best. Each is written with
:func:`~musiq_daemon.metadata.writer.write_best_of_burst` where its scores are written (the photo, or its
sidecars), by the write policy; ``index-only`` writes nothing. What became of the keyword is kept in
``photos.best_keyword`` (see :mod:`musiq_daemon.index.models`): ``added``; ``recheck`` (added, but the file
changed since); ``unmark`` (added, no longer the best); ``removed``; or ``user`` for a photo whose keyword
is the user's (see :mod:`musiq_daemon.metadata.xmp`), which is left as it is and never looked at again.
The first three tell the writer that a keyword without musiqd's record is musiqd's (a photo manager
dropped the record). A burst's best whose state is ``added`` or ``user`` is not read at all. Every
outcome is recorded against the photo as it is then: another process may have regrouped the burst while
the file was written.

Where the keyword is taken away is where the scores go now: after a change of write mode (embedded to
sidecar), a keyword embedded before stays in the photo, and an index made anew does not know which photos
musiqd marked before.

After an embedded write the photo's row takes the new size and modification time (the image data is
unchanged, verified by the writer, so its perceptual hash and burst stay), and the written files are
remembered so that the watcher ignores their change events.

Errors: a photo another program is writing (:class:`~musiq_daemon.errors.FileChangedError`), a full disk
or a file gone for a moment stays pending for the next call. A photo that cannot be written for a reason
only the user can change (read-only, unreadable metadata, a folder linking out of its root) is counted in
``refused`` with its one-line reason and stays pending too: after the fix, the next `musiqd cull --write`
writes it (the daemon retries it after a restart, not every few seconds).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Set
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from sqlalchemy import ColumnElement, select, update

from musiq_daemon.errors import DiskFullError, FileChangedError, MusiqError
from musiq_daemon.index.bursts import BATCH, pending_keywords
from musiq_daemon.index.db import IndexDB
from musiq_daemon.index.models import ADDED, MARKED, REMOVED, UNMARK, USERS, Burst, Photo
from musiq_daemon.index.paths import decode_path
from musiq_daemon.index.records import record_written_file
from musiq_daemon.metadata.writer import WritePolicy, WriteResult, write_best_of_burst
from musiq_daemon.paths import check_inside

log = logging.getLogger("musiqd.cull")


@dataclass
class MarkOutcome:
    """What :func:`mark_best_photos` did."""

    added: int = 0  # photos that got the keyword now
    removed: int = 0  # photos it was taken away from
    unchanged: int = 0  # already as wanted, or the keyword is the user's (nothing written)
    later: int = 0  # left for the next call (another program was writing, the disk is full, ...)
    refused: dict[int, str] = field(default_factory=dict)  # photo id -> one-line reason


@dataclass(frozen=True)
class _Pending:
    photo_id: int
    root: Path
    path: Path
    best: bool
    state: str | None  # photos.best_keyword
    stat: tuple[int, int]  # (size, mtime_ns) as the index has it
    burst_id: int | None  # the burst whose best it is (None for a former best)

    @property
    def known(self) -> bool:
        """The index says musiqd added the keyword."""
        return self.state in MARKED


def mark_best_photos(
    db: IndexDB,
    policy: WritePolicy,
    *,
    where: ColumnElement[bool] | None = None,
    skip: Set[int] = frozenset(),
    max_file_mb: Mapping[str, int] | None = None,
    settled_before: datetime | None = None,
) -> MarkOutcome:
    """Write the keyword changes the bursts call for (of the photos matching ``where``, leaving out the
    photo ids in ``skip``), :data:`~musiq_daemon.index.bursts.BATCH` photos at a time, so that photos
    left for later never hold up the others. ``settled_before``: mark only the bursts decided before then
    (the daemon waits for a burst to stop changing)."""
    outcome = MarkOutcome()
    if policy.mode == "index-only" or not policy.best_of_burst:
        return outcome
    for best in (False, True):  # the keywords to take away, then those to add
        after: int | None = 0
        while after is not None:
            with db.session() as session:
                page, after = pending_keywords(
                    session, best=best, where=where, after=after, limit=BATCH, settled_before=settled_before
                )
                pending = [
                    _Pending(
                        p.photo.id,
                        Path(decode_path(p.photo.root)),
                        Path(decode_path(p.photo.root)) / decode_path(p.photo.rel_path),
                        p.best,
                        p.photo.best_keyword,
                        (p.photo.size, p.photo.mtime_ns),
                        p.burst_id,
                    )
                    for p in page
                ]
            for item in pending:
                if item.best and item.state in (ADDED, USERS):  # marked already, or the user's: no write
                    _burst_done(db, item.burst_id, item.photo_id)
                elif item.photo_id not in skip:
                    _mark(db, item, policy, max_file_mb, outcome)
    return outcome


def _burst_done(db: IndexDB, burst_id: int | None, photo_id: int) -> None:
    """The burst's best is seen to: only while it is still that burst's best (another process may have
    regrouped it meanwhile, and SQLite reuses a deleted burst's id)."""
    if burst_id is not None:
        with db.session() as session:
            session.execute(
                update(Burst)
                .where(Burst.id == burst_id, Burst.best_photo_id == photo_id)
                .values(keyword_done=True)
            )


def _mark(
    db: IndexDB,
    item: _Pending,
    policy: WritePolicy,
    max_file_mb: Mapping[str, int] | None,
    outcome: MarkOutcome,
) -> None:
    try:
        check_inside(item.path, item.root)
        before = item.path.stat()
        result = write_best_of_burst(item.path, item.best, policy, known=item.known, max_file_mb=max_file_mb)
    except (FileChangedError, DiskFullError, FileNotFoundError) as exc:
        log.info("%s: best-of-burst keyword not written yet (%s)", item.path, exc)
        outcome.later += 1
        return
    except (MusiqError, OSError) as exc:
        message = str(exc) if isinstance(exc, MusiqError) else f"{item.path}: {exc.strerror or exc}"
        log.warning("best-of-burst keyword not written: %s", message)
        outcome.refused[item.photo_id] = message
        return
    _record(db, item, result, (before.st_size, before.st_mtime_ns))
    if not result.changed:
        outcome.unchanged += 1
    elif item.best:
        outcome.added += 1
    else:
        outcome.removed += 1


def _record(db: IndexDB, item: _Pending, result: WriteResult, before: tuple[int, int]) -> None:
    """What the write left, in one transaction that first looks at the photo as it is now: another process
    (the daemon, or `musiqd cull`) may have regrouped its burst while the file was written."""
    with db.session() as session:
        photo = session.get(Photo, item.photo_id, with_for_update=True)
        if photo is None:
            return
        best_now = photo.burst_id is not None and session.scalar(
            select(Burst.id).where(Burst.id == photo.burst_id, Burst.best_photo_id == photo.id)
        )
        written = result.best_written
        if written is None:  # the user's, from now on
            photo.best_keyword = USERS
        elif written:
            photo.best_keyword = ADDED if best_now else UNMARK  # no longer the best: to be taken away
        else:
            photo.best_keyword = REMOVED
            if best_now:  # the best again meanwhile: its burst is to be seen to again
                session.execute(update(Burst).where(Burst.id == photo.burst_id).values(keyword_done=False))
        if best_now and photo.best_keyword in (ADDED, USERS):
            session.execute(update(Burst).where(Burst.id == photo.burst_id).values(keyword_done=True))
        for file in result.files:
            if file.changed:
                record_written_file(session, file.path, file.signature)
        signature = result.signature
        # The new version is musiqd's own write of the version the index knew: it keeps its features.
        ours = result.target == "embedded" and result.changed and signature is not None
        if ours and signature is not None and (photo.size, photo.mtime_ns) == item.stat == before:
            photo.size, photo.mtime_ns, photo.inode = signature.size, signature.mtime_ns, signature.inode
    if result.changed and item.best:
        log.info("%s: marked as the best of its burst (%s)", item.path, result.target)
    elif result.changed:
        log.info("%s: no longer the best of its burst, keyword taken away (%s)", item.path, result.target)
