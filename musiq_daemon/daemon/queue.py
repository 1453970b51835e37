"""The durable job queue, kept in the index (table ``jobs``): one row per (photo, model).

>>> from musiq_daemon.daemon import queue
>>> with db.session() as session:
...     queue.enqueue(session, photo.id, "koniq")
>>> job = queue.claim(db, model_ids=["koniq"])
>>> queue.complete(db, job.job_id)

A job is ``pending`` until :func:`claim` makes it ``running``; :func:`complete` makes it ``done``;
:func:`fail` makes it ``pending`` again with a delay while retries are left, then ``failed``;
:func:`release` gives a claimed job back untouched. Every change is one short transaction, so the queue
survives restarts and ``kill -9``: jobs left ``running`` by a dead process are pending again after
:func:`requeue_stale` (see Leases).

Every function takes an :class:`~musiq_daemon.index.IndexDB` (and runs its own transaction) or a
``Session`` (and joins the caller's transaction: the worker records a score and completes its job in one
commit, so a score without a done job, or a done job without a score, cannot be left behind). Timestamps
are UTC; ``now`` arguments exist so tests can move time. SQLite and PostgreSQL are supported.

Decisions
---------
Order
    Fresh jobs first, oldest first; then retries that are due, earliest first. This is the order of the
    ``(state, next_attempt_at)`` index (plus the row id), so a claim stays one index probe however many
    done jobs the table holds.

One score per file version
    A done job stands for the version of the file that was current when it finished. As long as the
    photo's recorded modification time is not later than that moment, :func:`enqueue` leaves the job
    alone, so a rescan that enqueues every photo it sees costs nothing. A failed job follows the same
    rule: a corrupt file is not retried on every rescan, but it is as soon as it is written again (a copy
    that completes). A file replaced by one that keeps an *older* modification time (``cp -p``, copies
    made by Windows Explorer) is not noticed this way: a caller that sees a different size, inode or
    content hash than the index holds passes ``force=True``. A new model version does not re-queue
    anything by itself: re-scoring is explicit (:func:`rescore`).

Retries
    Every failure is retried ``retries`` times, ``backoff * 2**(n-1)`` seconds after the n-th failed
    attempt (1, 2, 4 minutes with the defaults), then the job is ``failed`` with its last one-line reason.
    Decode errors are retried too: a half-copied file looks corrupt until the copy completes, and a file
    that really is corrupt costs only a few extra decode attempts. ``permanent=True`` skips the retries for
    failures that retrying cannot change.

Interrupted attempts
    A kill -9, an out-of-memory kill or a power cut leaves jobs ``running``; :func:`requeue_stale` (at the
    next start) makes them pending again without counting an attempt and adds one to ``interrupted``
    instead. A kill says nothing about which photo caused it when several were in flight: the one in
    inference, the one decoded ahead, or none. So a job interrupted once is a *suspect*, and the worker
    scores a suspect alone (nothing claimed or decoded next to it; :func:`claim` with ``suspects=False``
    passes over suspects). A kill while one photo alone is in flight is charged to it: once it has been
    interrupted more than ``retries`` times, :func:`requeue_stale` fails it rather than let it crash-loop
    the daemon. A photo that was only waiting next to the culprit is interrupted once, then scored alone,
    its attempts untouched. :func:`release` (a deliberate stop, a file that is still changing) counts
    nothing either.

Leases
    Several processes, on several machines, may take jobs from one queue (the daemon's workers and
    ``musiqd worker``). A claim records its owner (:func:`owner_id`: host, pid, a random part) and a lease
    (:data:`LEASE_S`); the owner renews it every quarter lease (:func:`renew_leases`). Any process may call
    :func:`requeue_stale`: it takes back only jobs whose lease ran out, whose owner is a process of this
    machine that no longer exists, or that have no owner; a live owner's jobs are never taken. Lease times
    come from the claiming machine's clock: machines sharing an index keep their clocks in sync (NTP),
    within a fraction of the lease. PostgreSQL job libraries (procrastinate, for one) were considered and
    not used: they are PostgreSQL-only while SQLite stays the single-machine default, and this queue's
    rules (one job per photo and model, file versions, suspects after a kill) are the point of it.

Moves
    See :func:`adopt_moved`: scores follow the content hash from a vanished file to the new one.
"""

from __future__ import annotations

import os
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Literal

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Result,
    and_,
    case,
    exists,
    func,
    literal,
    or_,
    select,
    update,
)
from sqlalchemy.orm import Session

from musiq_daemon.errors import UsageError
from musiq_daemon.index.db import IndexDB
from musiq_daemon.index.models import JOB_STATES, Job, Photo, Score
from musiq_daemon.index.paths import decode_path, encode_path
from musiq_daemon.index.scope import scopes_under

if TYPE_CHECKING:
    from sqlalchemy.dialects import postgresql, sqlite

RescoreMode = Literal["missing", "all"]

#: Photos re-queued per transaction by :func:`rescore`: short enough that the worker and the watcher
#: never wait long for SQLite's single writer lock, long enough to queue a million photos in seconds.
RESCORE_BATCH: Final = 2000
#: How long a claim holds without renewal: the owner renews every LEASE_S / 4 (its heartbeat), so only a
#: process that is gone (or cut off from the database for that long) loses its jobs to another.
LEASE_S: Final = 60.0
#: Longest error text kept in a job (a decoder can quote a lot of garbage).
MAX_ERROR_CHARS: Final = 500
# PostgreSQL may skip every due row while a concurrent claim holds it; a few more tries then find one.
_CLAIM_TRIES: Final = 5


@dataclass(frozen=True)
class ClaimedJob:
    """A job that :func:`claim` marked ``running`` for the caller, with what is needed to process it."""

    job_id: int
    photo_id: int
    model_id: str
    path: Path  # absolute
    root: Path  # the root the photo is recorded under (``path`` is inside it)
    attempts: int  # including this one
    interrupted: int  # times the process died while this job was in flight (a suspect when > 0)
    size: int  # the file as recorded in the index when the job was claimed
    mtime_ns: int


@dataclass(frozen=True)
class FailedJob:
    """A job with an error to show: ``failed``, or ``done`` with a score whose metadata was not written."""

    path: Path
    model_id: str
    state: str
    error: str
    attempts: int
    when: datetime


def utc_now() -> datetime:
    return datetime.now(UTC)


@contextmanager
def _transaction(target: IndexDB | Session) -> Iterator[Session]:
    """The caller's session (its transaction), or a new one-transaction session of the index."""
    if isinstance(target, Session):
        yield target
    else:
        with target.session() as session:
            yield session


def _dialect(session: Session) -> str:
    return session.get_bind().dialect.name


def _count(result: Result[Any]) -> int:
    """Rows changed by an ``UPDATE`` (which returns a cursor result)."""
    assert isinstance(result, CursorResult)
    return result.rowcount


def _update_running(session: Session, job_id: int, **values: Any) -> bool:
    """Set ``values`` on the job if it is running (a job another process finished or requeued meanwhile
    is left alone); True when it was."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.state == "running")
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    return _count(result) > 0


def _one_line(error: str) -> str:
    text = " ".join(error.split())
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def _reset_values(moment: datetime) -> dict[str, Any]:
    return {
        "state": "pending",
        "attempts": 0,
        "interrupted": 0,
        "last_error": None,
        "next_attempt_at": None,
        "updated_at": moment,
    }


def _job_insert(session: Session) -> postgresql.Insert | sqlite.Insert:
    """The dialect's ``INSERT`` into jobs, for ``ON CONFLICT DO NOTHING``: a (photo, model) job queued
    concurrently by another process is simply there already (a plain insert would abort the caller's
    whole transaction)."""
    # Imported here: `musiqd status` reads the queue and needs neither dialect's INSERT.
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = _dialect(session)
    if dialect == "postgresql":
        return postgresql.insert(Job)
    if dialect == "sqlite":
        return sqlite.insert(Job)
    raise UsageError(f"the job queue needs a SQLite or PostgreSQL index, not {dialect}")


_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def _covers_current_version(job: Job, photo: Photo) -> bool:
    """Whether ``job`` finished after the photo's recorded version of the file was written."""
    finished_ns = (job.updated_at - _EPOCH) // timedelta(microseconds=1) * 1000
    return photo.mtime_ns <= finished_ns


def enqueue(
    target: IndexDB | Session,
    photo_id: int,
    model_id: str,
    *,
    force: bool = False,
    now: datetime | None = None,
) -> bool:
    """Queue ``photo_id`` for ``model_id``; whether a job was created or reset to pending.

    Nothing happens to a job that is pending or running already, nor (unless ``force``) to one that is
    done or failed for the current version of the file (see the module docstring).
    """
    moment = now or utc_now()
    with _transaction(target) as session:
        job = session.scalars(select(Job).where(Job.photo_id == photo_id, Job.model_id == model_id)).first()
        if job is None:
            inserted = session.execute(
                _job_insert(session)
                .values(
                    photo_id=photo_id,
                    model_id=model_id,
                    state="pending",
                    attempts=0,
                    created_at=moment,
                    updated_at=moment,
                )
                .on_conflict_do_nothing(index_elements=[Job.photo_id, Job.model_id])
                .returning(Job.id)  # counted by rows returned: PostgreSQL reports no rowcount here
            )
            return len(inserted.all()) > 0
        if job.state in ("pending", "running"):
            return False
        photo = session.get(Photo, photo_id)
        if not force and photo is not None and _covers_current_version(job, photo):
            return False
        for name, value in _reset_values(moment).items():
            setattr(job, name, value)
        session.flush()
        return True


def _due(moment: datetime, model_ids: Sequence[str] | None, *, suspects: bool = True) -> ColumnElement[bool]:
    condition = and_(
        Job.state == "pending", or_(Job.next_attempt_at.is_(None), Job.next_attempt_at <= moment)
    )
    if model_ids is not None:
        condition = and_(condition, Job.model_id.in_(list(model_ids)))
    if not suspects:
        condition = and_(condition, Job.interrupted == 0)
    return condition


def _taken(moment: datetime, owner: str | None, lease_s: float) -> dict[str, Any]:
    """What claiming a job sets: running, one more attempt, leased to ``owner`` for ``lease_s``."""
    return {
        "state": "running",
        "attempts": Job.attempts + 1,
        "updated_at": moment,
        "lease_owner": owner,
        "lease_expires_at": moment + timedelta(seconds=lease_s),
    }


def claim(
    target: IndexDB | Session,
    *,
    model_ids: Sequence[str] | None = None,
    suspects: bool = True,
    owner: str | None = None,
    lease_s: float = LEASE_S,
    now: datetime | None = None,
) -> ClaimedJob | None:
    """Take the next due pending job (of one of ``model_ids``, default any) and mark it running.
    ``suspects=False`` passes over jobs that were in flight when the process died (see the module doc).

    Safe across threads and processes: the job is chosen and taken in one ``UPDATE`` statement, which
    SQLite runs under its single writer lock, and PostgreSQL with ``FOR UPDATE SKIP LOCKED`` so that
    concurrent claims pass each other's rows instead of waiting for them.
    """
    moment = now or utc_now()
    with _transaction(target) as session:
        for _ in range(_CLAIM_TRIES):
            candidate = (
                select(Job.id)
                .where(_due(moment, model_ids, suspects=suspects))
                .order_by(Job.next_attempt_at.asc().nulls_first(), Job.id)
                .limit(1)
            )
            if _dialect(session) == "postgresql":
                candidate = candidate.with_for_update(skip_locked=True)
            taken = session.execute(
                update(Job)
                .where(Job.id == candidate.scalar_subquery(), Job.state == "pending")
                .values(**_taken(moment, owner, lease_s))
                .returning(Job.id, Job.photo_id, Job.model_id, Job.attempts, Job.interrupted)
                .execution_options(synchronize_session=False)
            ).first()
            if taken is not None:
                root, rel, size, mtime_ns = session.execute(
                    select(Photo.root, Photo.rel_path, Photo.size, Photo.mtime_ns).where(
                        Photo.id == taken.photo_id
                    )
                ).one()
                root_path = Path(decode_path(root))
                return ClaimedJob(
                    taken.id,
                    taken.photo_id,
                    taken.model_id,
                    root_path / decode_path(rel),
                    root_path,
                    taken.attempts,
                    taken.interrupted,
                    size,
                    mtime_ns,
                )
            if not session.scalar(select(exists().where(_due(moment, model_ids, suspects=suspects)))):
                return None
    return None


def claim_photo(
    target: IndexDB | Session,
    *,
    model_ids: Sequence[str] | None = None,
    suspects: bool = True,
    owner: str | None = None,
    lease_s: float = LEASE_S,
    now: datetime | None = None,
) -> list[ClaimedJob]:
    """:func:`claim` the next due job, and with it every other due job of the same photo (of ``model_ids``),
    so that the photo is decoded and written once for all its models. Empty when nothing is due."""
    moment = now or utc_now()
    first = claim(target, model_ids=model_ids, suspects=suspects, owner=owner, lease_s=lease_s, now=moment)
    if first is None:
        return []
    with _transaction(target) as session:
        siblings = select(Job.id).where(
            Job.photo_id == first.photo_id, Job.id != first.job_id, _due(moment, model_ids, suspects=suspects)
        )
        if _dialect(session) == "postgresql":
            siblings = siblings.with_for_update(skip_locked=True)
        taken = session.execute(
            update(Job)
            .where(Job.id.in_(siblings), Job.state == "pending")
            .values(**_taken(moment, owner, lease_s))
            .returning(Job.id, Job.model_id, Job.attempts, Job.interrupted)
            .execution_options(synchronize_session=False)
        ).all()
    group = [first]
    for row in sorted(taken, key=lambda r: r.id):
        group.append(
            replace(
                first,
                job_id=row.id,
                model_id=row.model_id,
                attempts=row.attempts,
                interrupted=row.interrupted,
            )
        )
    return group


def complete(
    target: IndexDB | Session, job_id: int, *, note: str | None = None, now: datetime | None = None
) -> bool:
    """Mark a running job done; ``note`` keeps a problem that did not stop it (metadata not written).
    False when the job was not running (nothing changed)."""
    moment = now or utc_now()
    with _transaction(target) as session:
        return _update_running(
            session, job_id, state="done", last_error=_one_line(note) if note else None, next_attempt_at=None,
            updated_at=moment,
        )  # fmt: skip


def fail(
    target: IndexDB | Session,
    job_id: int,
    error: str,
    *,
    retries: int,
    backoff: float,
    permanent: bool = False,
    now: datetime | None = None,
) -> Literal["pending", "failed"] | None:
    """Record a failed attempt of a running job: pending again after ``backoff * 2**(attempts-1)`` seconds
    while no more than ``retries`` retries were made (and not ``permanent``), else failed. The new state,
    or None when the job was not running."""
    moment = now or utc_now()
    with _transaction(target) as session:
        attempts = session.scalar(select(Job.attempts).where(Job.id == job_id, Job.state == "running"))
        if attempts is None:
            return None
        retry = not permanent and attempts <= retries
        values: dict[str, Any] = {"last_error": _one_line(error), "updated_at": moment}
        if retry:
            delay = backoff * 2 ** max(attempts - 1, 0)
            values |= {"state": "pending", "next_attempt_at": moment + timedelta(seconds=delay)}
        else:
            values |= {"state": "failed", "next_attempt_at": None}
        _update_running(session, job_id, **values)
        return "pending" if retry else "failed"


def release(
    target: IndexDB | Session, job_id: int, *, delay: float = 0.0, now: datetime | None = None
) -> bool:
    """Give a running job back as pending, due after ``delay`` seconds, without counting the attempt
    (a deliberate stop, or a file that is still being written). False when it was not running."""
    moment = now or utc_now()
    with _transaction(target) as session:
        return _update_running(
            session, job_id, state="pending", attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
            next_attempt_at=moment + timedelta(seconds=delay) if delay > 0 else None, updated_at=moment,
        )  # fmt: skip


def postpone_root(target: IndexDB | Session, root: Path, *, delay: float, now: datetime | None = None) -> int:
    """Make every pending job of photos recorded under ``root`` wait ``delay`` seconds: the root is
    unreachable (an unmounted share), and claiming its jobs one by one only to put each back is churn.
    The number of jobs postponed."""
    moment = now or utc_now()
    under_root = select(Photo.id).where(Photo.root == encode_path(root))
    with _transaction(target) as session:
        result = session.execute(
            update(Job)
            .where(Job.state == "pending", Job.photo_id.in_(under_root))
            .values(next_attempt_at=moment + timedelta(seconds=delay), updated_at=moment)
            .execution_options(synchronize_session=False)
        )
        return _count(result)


def interrupted_message(times: int) -> str:
    """The reason a job is given up after the process died ``times`` times while it was in flight."""
    return (
        f"musiqd stopped {times} times while scoring this photo, at least {times - 1} of them with no other "
        "photo in flight (killed, crashed or out of memory?); not trying again"
    )


@dataclass(frozen=True)
class Requeued:
    """What :func:`requeue_stale` did: jobs made pending again, and jobs given up (path, reason)."""

    requeued: int
    given_up: list[tuple[Path, str]]


def owner_id() -> str:
    """A name for this process as a lease owner and in the worker registry: host, pid and a random part
    (a pid is reused after a reboot; the random part never is)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"


def owner_gone(owner: str) -> bool:
    """Whether the process named ``owner`` is known to be dead: it ran on this machine and its pid is
    gone. A process on another machine is only known dead when its lease runs out."""
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != socket.gethostname() or not pid_text.isdigit():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except OSError:  # it exists (owned by another user)
        return False
    return False


def renew_leases(
    target: IndexDB | Session, owner: str, *, lease_s: float = LEASE_S, now: datetime | None = None
) -> int:
    """Extend the leases of every job ``owner`` is running; how many (the owner's heartbeat)."""
    moment = now or utc_now()
    with _transaction(target) as session:
        result = session.execute(
            update(Job)
            .where(Job.state == "running", Job.lease_owner == owner)
            .values(lease_expires_at=moment + timedelta(seconds=lease_s))
            .execution_options(synchronize_session=False)
        )
        return _count(result)


def requeue_stale(
    target: IndexDB | Session,
    *,
    retries: int | None = None,
    now: datetime | None = None,
    gone: Callable[[str], bool] = owner_gone,
) -> Requeued:
    """Make running jobs whose owner is gone pending again, their attempt not counted and one more
    interruption counted (see the module doc): jobs whose lease ran out, whose owner ``gone`` says is
    dead (a process of this machine whose pid is gone), or that have no owner (claimed by an older
    musiqd). Live owners' jobs are left alone, so any process may call it at any time. With ``retries``,
    the job of a photo that was its owner's only one in flight is failed instead when it has now been
    interrupted more than ``retries`` times (decided here, before anything could claim it again)."""
    moment = now or utc_now()
    with _transaction(target) as session:
        running = session.execute(
            select(
                Job.id, Job.photo_id, Job.interrupted, Job.lease_owner, Job.lease_expires_at, Photo.root,
                Photo.rel_path,
            )
            .join(Photo, Job.photo_id == Photo.id)
            .where(Job.state == "running")
        ).all()  # fmt: skip
        cache: dict[str, bool] = {}

        def abandoned(owner: str | None, expires: datetime | None) -> bool:
            if owner is None or expires is None or expires <= moment:
                return True
            if owner not in cache:
                cache[owner] = gone(owner)
            return cache[owner]

        stale = [row for row in running if abandoned(row.lease_owner, row.lease_expires_at)]
        photos_of: dict[str | None, set[int]] = {}
        for row in stale:
            photos_of.setdefault(row.lease_owner, set()).add(row.photo_id)
        # Only a photo that was alone in its owner's flight is charged with the kill; several are suspects.
        given_up = [
            (row.id, row.interrupted + 1, Path(decode_path(row.root)) / decode_path(row.rel_path))
            for row in stale
            if len(photos_of[row.lease_owner]) == 1 and retries is not None and row.interrupted + 1 > retries
        ]
        if stale:
            session.execute(
                update(Job)
                .where(Job.id.in_([row.id for row in stale]), Job.state == "running")
                .values(
                    state="pending",
                    attempts=case((Job.attempts > 0, Job.attempts - 1), else_=0),
                    interrupted=Job.interrupted + 1,
                    next_attempt_at=None,
                    lease_owner=None,
                    lease_expires_at=None,
                    updated_at=moment,
                )
                .execution_options(synchronize_session=False)
            )
        for job_id, times, _ in given_up:
            session.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(state="failed", last_error=interrupted_message(times), updated_at=moment)
                .execution_options(synchronize_session=False)
            )
        return Requeued(
            len(stale) - len(given_up), [(path, interrupted_message(times)) for _, times, path in given_up]
        )


def queue_counts(target: IndexDB | Session) -> dict[str, int]:
    """Jobs per state (every state present, zero included)."""
    with _transaction(target) as session:
        counts = dict.fromkeys(JOB_STATES, 0)
        for state, count in session.execute(select(Job.state, func.count()).group_by(Job.state)).all():
            counts[state] = int(count)
        return counts


def recent_failures(target: IndexDB | Session, limit: int = 10) -> list[FailedJob]:
    """The latest failed jobs and done jobs with a note (scored, metadata not written), newest first."""
    with _transaction(target) as session:
        rows = session.execute(
            select(
                Photo.root,
                Photo.rel_path,
                Job.model_id,
                Job.state,
                Job.last_error,
                Job.attempts,
                Job.updated_at,
            )
            .join(Photo, Photo.id == Job.photo_id)
            .where(or_(Job.state == "failed", and_(Job.state == "done", Job.last_error.is_not(None))))
            .order_by(Job.updated_at.desc(), Job.id.desc())
            .limit(limit)
        ).all()
    return [
        FailedJob(Path(decode_path(root)) / decode_path(rel), model, state, error or "", attempts, when)
        for root, rel, model, state, error, attempts, when in rows
    ]


def under_condition(db: IndexDB, under: Path) -> ColumnElement[bool]:
    """Photos at or below ``under``: the scopes ``query --under`` uses, so both select the same photos."""
    with db.session() as session:
        roots = list(session.scalars(select(Photo.root).distinct()))
    terms: list[ColumnElement[bool]] = []
    for scope in scopes_under(under, roots):
        below = func.substr(Photo.root if scope.rel is None else Photo.rel_path, 1, len(scope.prefix))
        if scope.rel is None:
            terms.append(or_(Photo.root == scope.root, below == scope.prefix))
        else:
            terms.append(
                and_(Photo.root == scope.root, or_(Photo.rel_path == scope.rel, below == scope.prefix))
            )
    return or_(*terms)


def rescore(
    db: IndexDB,
    model_id: str,
    *,
    mode: RescoreMode,
    paths: Sequence[Path] = (),
    model_version: str | None = None,
    now: datetime | None = None,
) -> int:
    """Queue photos of the index (present on disk, at or below one of ``paths`` if given) for
    ``model_id``; the number of jobs queued.

    ``mode="missing"``: photos without a latest score of the model (with ``model_version``: without one
    made by that version, so that after a model upgrade re-running it resumes where it stopped).
    ``mode="all"``: every photo, already scored or not. Failed jobs are queued again either way; jobs
    already pending or running are left as they are.
    """
    if mode not in ("missing", "all"):
        raise UsageError(f"unknown rescore mode '{mode}': choose missing or all")
    moment = now or utc_now()
    selection = select(Photo.id).where(Photo.missing_since.is_(None))
    if paths:
        selection = selection.where(or_(*(under_condition(db, p) for p in paths)))
    if mode == "missing":
        scored = and_(Score.photo_id == Photo.id, Score.model_id == model_id, Score.is_latest.is_(True))
        if model_version is not None:
            scored = and_(scored, Score.model_version == model_version)
        selection = selection.where(~exists().where(scored))
    with db.session() as session:
        photo_ids = list(session.scalars(selection.order_by(Photo.id)))
    queued = 0
    for start in range(0, len(photo_ids), RESCORE_BATCH):
        batch = photo_ids[start : start + RESCORE_BATCH]
        with db.session() as session:
            reset = session.execute(
                update(Job)
                .where(Job.model_id == model_id, Job.photo_id.in_(batch), Job.state.in_(("done", "failed")))
                .values(**_reset_values(moment))
                .execution_options(synchronize_session=False)
            )
            new_jobs = select(
                Photo.id,
                literal(model_id),
                literal("pending"),
                literal(0),
                literal(moment, Job.created_at.type),
                literal(moment, Job.updated_at.type),
            ).where(Photo.id.in_(batch))
            inserted = session.execute(
                _job_insert(session)
                .from_select(
                    ["photo_id", "model_id", "state", "attempts", "created_at", "updated_at"], new_jobs
                )
                .on_conflict_do_nothing(index_elements=[Job.photo_id, Job.model_id])
                .returning(Job.id)
            )
            queued += _count(reset) + len(inserted.all())
    return queued


def _file_gone(photo: Photo) -> bool:
    """Whether a photo's file is no longer there (and its root is, so an unmounted share does not count)."""
    root = Path(decode_path(photo.root))
    return root.is_dir() and not os.path.lexists(root / decode_path(photo.rel_path))


def adopt_moved(
    session: Session, photo: Photo, content_hash: str, *, now: datetime | None = None
) -> Photo | None:
    """Give ``photo`` (a file new to the index) the scores of a vanished photo with the same content hash:
    the same photo, moved or renamed. Returns the vanished photo's row when anything was adopted.

    The vanished photo is one marked missing, or whose file no longer exists under a reachable root (a
    polling watcher can see the new name before the old one's deletion); of several, the one seen last.
    Its scores (every model version) and done jobs move to ``photo``; the moved jobs count as finished
    now, so :func:`enqueue` does not queue the photo again even when the move gave it a new modification
    time (a copy across shares). Models ``photo`` already has scores for keep them. The vanished row stays,
    marked missing, with its remaining jobs dropped: its file is the one now known as ``photo``.

    Only the index moves here: metadata embedded in the photo travels with it, and the caller moves the
    sidecars (:func:`musiq_daemon.metadata.sidecar.move_sidecars`, :func:`follow_sidecars`). A duplicate
    whose original still exists is not a move; it is scored as a photo of its own.
    """
    moment = now or utc_now()
    if photo.content_hash is None:
        photo.content_hash = content_hash
    candidates = session.scalars(
        select(Photo)
        .where(Photo.content_hash == content_hash, Photo.id != photo.id)
        .order_by(Photo.last_seen.desc(), Photo.id.desc())
    ).all()
    old = next((p for p in candidates if p.missing_since is not None or _file_gone(p)), None)
    if old is None:
        return None
    has_scores = set(session.scalars(select(Score.model_id).where(Score.photo_id == photo.id).distinct()))
    moved_models = (
        set(session.scalars(select(Score.model_id).where(Score.photo_id == old.id).distinct())) - has_scores
    )
    if not moved_models:
        return None
    session.execute(
        update(Score)
        .where(Score.photo_id == old.id, Score.model_id.in_(moved_models))
        .values(photo_id=photo.id)
        .execution_options(synchronize_session=False)
    )
    for model_id in moved_models:
        old_job = session.scalars(
            select(Job).where(Job.photo_id == old.id, Job.model_id == model_id, Job.state == "done")
        ).first()
        new_job = session.scalars(
            select(Job).where(Job.photo_id == photo.id, Job.model_id == model_id)
        ).first()
        if new_job is None and old_job is not None:
            old_job.photo_id, old_job.updated_at = photo.id, moment
        elif new_job is None:  # scored without a job (``musiqd score``): the adopted score still counts
            session.add(
                Job(
                    photo_id=photo.id,
                    model_id=model_id,
                    state="done",
                    attempts=0,
                    created_at=moment,
                    updated_at=moment,
                )
            )
        elif new_job.state != "running":  # a running job finishes, and its score becomes the latest
            # Queued before the adoption: the adopted score makes it unnecessary.
            new_job.state, new_job.last_error, new_job.next_attempt_at = "done", None, None
            new_job.updated_at = moment
    session.flush()
    for job in session.scalars(select(Job).where(Job.photo_id == old.id)).all():
        if job.state != "running":
            session.delete(job)
    if old.missing_since is None:
        old.missing_since = moment
    session.flush()
    session.expire(photo, ["scores", "jobs"])
    return old


def follow_sidecars(session: Session, photo: Photo, moves: list[tuple[Path, Path]]) -> None:
    """Point ``photo``'s scores at the sidecars' new names after they moved with the photo."""
    for source, target in moves:
        session.execute(
            update(Score)
            .where(Score.photo_id == photo.id, Score.written_path == encode_path(source))
            .values(written_path=encode_path(target))
            .execution_options(synchronize_session=False)
        )
