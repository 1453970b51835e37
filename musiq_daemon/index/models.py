"""The index schema: typed SQLAlchemy 2 models.

The index is both the user's catalogue of scores (``musiqd query``) and the daemon's memory: which file
was scored by which exact model, what is queued, what failed and why, and which file versions musiqd
wrote itself (so that its own writes are never mistaken for new photos).

Paths are stored relative to their root, in :func:`musiq_daemon.index.paths.encode_path` form: UTF-8
text in which undecodable bytes of a file name (and ``%`` itself) are percent-escaped, so any POSIX file
name round-trips exactly and the column stays valid text for every database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

# Explicit constraint names keep migrations identical on SQLite and PostgreSQL.
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
}

JOB_STATES = ("pending", "running", "done", "failed")


class UTCDateTime(TypeDecorator[datetime]):
    """Timestamps stored as UTC and always returned zone-aware (SQLite would return naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the index: attach a time zone")
        return value.astimezone(UTC).replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        assert isinstance(value, datetime)
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


#: photos.best_keyword: musiqd's best-of-burst keyword is there; it was, but the file changed since (to be
#: looked at again); it is there but the photo is no longer the best (to be taken away); musiqd took it
#: away; its state is the user's.
ADDED, RECHECK, UNMARK, REMOVED, USERS = "added", "recheck", "unmark", "removed", "user"
#: The states in which musiqd's keyword is (or was last seen) in the file.
MARKED = (ADDED, RECHECK, UNMARK)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class Photo(Base):
    """A photo file under a root. Never deleted: a vanished file gets ``missing_since``."""

    __tablename__ = "photos"
    __table_args__ = (UniqueConstraint("root", "rel_path"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    root: Mapped[str] = mapped_column(Text)
    rel_path: Mapped[str] = mapped_column(Text)
    content_hash: Mapped[str | None] = mapped_column(String(120), index=True)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int | None] = mapped_column(BigInteger)
    format: Mapped[str | None] = mapped_column(String(32))
    width: Mapped[int | None] = mapped_column(Integer)
    height: Mapped[int | None] = mapped_column(Integer)
    taken_at: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    first_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    last_seen: Mapped[datetime] = mapped_column(UTCDateTime)
    missing_since: Mapped[datetime | None] = mapped_column(UTCDateTime, index=True)
    # What `musiqd cull` groups by, read once per file version: EXIF make and model, the capture time with
    # its sub-seconds (ms since the epoch), a 64-bit perceptual hash (signed, as databases store it).
    camera: Mapped[str | None] = mapped_column(String(200))
    taken_at_ms: Mapped[int | None] = mapped_column(BigInteger)
    phash: Mapped[int | None] = mapped_column(BigInteger, index=True)  # the daemon finds NULLs every 5 s
    # No foreign key (see migration 0006): `cull` clears a photo's burst before it deletes the burst.
    burst_id: Mapped[int | None] = mapped_column(Integer, index=True)
    # What became of the photo's MUSIQ|best-of-burst keyword (ADDED ... USERS above), None never decided
    # (see index.bursts.pending_keywords).
    best_keyword: Mapped[str | None] = mapped_column(String(8), index=True)

    scores: Mapped[list[Score]] = relationship(back_populates="photo", cascade="all, delete-orphan")
    jobs: Mapped[list[Job]] = relationship(back_populates="photo", cascade="all, delete-orphan")


class Burst(Base):
    """Near-identical shots of one scene (same camera, seconds apart, perceptually alike): `musiqd cull`."""

    __tablename__ = "bursts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    camera: Mapped[str | None] = mapped_column(String(200))
    first_taken: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_taken: Mapped[datetime | None] = mapped_column(UTCDateTime)
    size: Mapped[int] = mapped_column(Integer)
    model_id: Mapped[str] = mapped_column(String(64))  # whose score chose the best
    best_photo_id: Mapped[int | None] = mapped_column(Integer)
    decided_at: Mapped[datetime] = mapped_column(UTCDateTime)
    # The best photo's keyword has been seen to (musiq_daemon.best_of_burst); a new burst starts without.
    keyword_done: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false(), index=True)


class Score(Base):
    """One photo scored by one model version. ``is_latest`` marks the row queries use per (photo, model)."""

    __tablename__ = "scores"
    __table_args__ = (
        UniqueConstraint("photo_id", "model_id", "model_version"),
        # query --min/--max/--sort score for one model: an index range scan, not a table scan.
        Index("ix_scores_model_latest_score", "model_id", "is_latest", "score"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    model_version: Mapped[str] = mapped_column(String(64))
    variant: Mapped[str] = mapped_column(String(32))
    model_sha256: Mapped[str | None] = mapped_column(String(64))
    is_latest: Mapped[bool] = mapped_column(Boolean, default=True)
    score: Mapped[float] = mapped_column(Float)
    raw: Mapped[float] = mapped_column(Float)
    scale_min: Mapped[float] = mapped_column(Float)
    scale_max: Mapped[float] = mapped_column(Float)
    resolution_policy: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(16))
    num_tokens: Mapped[int] = mapped_column(Integer)
    duration_s: Mapped[float] = mapped_column(Float)
    source: Mapped[str | None] = mapped_column(String(64))
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    written_to: Mapped[str | None] = mapped_column(String(16))  # "embedded", "sidecar" or "none"
    written_path: Mapped[str | None] = mapped_column(Text)
    rating_written: Mapped[int | None] = mapped_column(Integer)

    photo: Mapped[Photo] = relationship(back_populates="scores")


class Job(Base):
    """The durable work queue: one row per (photo, model); survives restarts and kill -9."""

    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("photo_id", "model_id"),
        Index("ix_jobs_state_next_attempt", "state", "next_attempt_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    photo_id: Mapped[int] = mapped_column(ForeignKey("photos.id", ondelete="CASCADE"), index=True)
    model_id: Mapped[str] = mapped_column(String(64))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # Times the process died while this job was in flight (kill -9, out of memory, power cut): counted
    # apart from attempts, see musiq_daemon.daemon.queue ("Interrupted attempts").
    interrupted: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The process that claimed a running job, and until when its claim holds (renewed while it works).
    lease_owner: Mapped[str | None] = mapped_column(String(120))
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    last_error: Mapped[str | None] = mapped_column(Text)
    next_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime)

    photo: Mapped[Photo] = relationship(back_populates="jobs")


class WrittenFile(Base):
    """The signature of every file version musiqd wrote (photos and sidecars), to ignore our own events."""

    __tablename__ = "written_files"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text, unique=True)  # absolute, encode_path form
    dev: Mapped[int] = mapped_column(BigInteger)
    inode: Mapped[int] = mapped_column(BigInteger)
    size: Mapped[int] = mapped_column(BigInteger)
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    written_at: Mapped[datetime] = mapped_column(UTCDateTime)


class WorkerRow(Base):
    """One scoring process (a worker of the daemon, or ``musiqd worker`` on any machine), for ``musiqd
    status``: written at start, every heartbeat and on stopping. A row whose heartbeat is old belongs to a
    process that is gone."""

    __tablename__ = "workers"

    id: Mapped[str] = mapped_column(String(120), primary_key=True)  # host:pid:random
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    kind: Mapped[str] = mapped_column(String(16))  # "watcher", "daemon" (its workers) or "worker"
    device: Mapped[str | None] = mapped_column(String(16))
    models: Mapped[str | None] = mapped_column(Text)  # comma-separated model ids
    path_map: Mapped[str | None] = mapped_column(Text)  # "INDEX=LOCAL;..." as the worker sees the photos
    roots: Mapped[str | None] = mapped_column(Text)  # a watcher's roots, JSON list in encode_path form
    state: Mapped[str] = mapped_column(String(16))  # running, paused, stopped
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)
    done: Mapped[int] = mapped_column(BigInteger, default=0)
    failed: Mapped[int] = mapped_column(BigInteger, default=0)
    busy_s: Mapped[float] = mapped_column(Float, default=0.0)


DAEMON_STATES = ("starting", "scanning", "running", "paused", "quiet-hours", "stopped")


class DaemonState(Base):
    """The running daemon's state, one row (id 1): what ``musiqd status`` shows and how ``musiqd pause``
    reaches the daemon (it polls ``paused``), also across users and containers sharing the index."""

    __tablename__ = "daemon_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    pid: Mapped[int | None] = mapped_column(Integer)
    host: Mapped[str | None] = mapped_column(String(255))
    state: Mapped[str] = mapped_column(String(16), default="stopped")  # DAEMON_STATES
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime)
    roots: Mapped[str | None] = mapped_column(Text)  # JSON list of encode_path roots being watched
    models: Mapped[str | None] = mapped_column(Text)  # comma-separated model ids
    device: Mapped[str | None] = mapped_column(String(16))
    done: Mapped[int] = mapped_column(BigInteger, default=0)  # photos scored since started_at
    failed: Mapped[int] = mapped_column(BigInteger, default=0)  # jobs failed since started_at
    busy_s: Mapped[float] = mapped_column(Float, default=0.0)  # seconds spent scoring since started_at
    message: Mapped[str | None] = mapped_column(Text)  # e.g. scan progress or unavailable roots
