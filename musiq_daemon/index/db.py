"""Opening the index: SQLite by default (WAL, busy timeout, foreign keys), any SQLAlchemy URL otherwise.

The schema is versioned with Alembic (``migrations/``). Opening a database created by an older musiqd
upgrades it; one created by a newer musiqd is refused with a clear message (never downgraded silently).

Several processes may open one new or older index at once (the daemon, ``musiqd score``, a query): the
check-and-upgrade step runs under a cross-process lock (:func:`schema_lock`), and the revision is checked
again under it, so exactly one of them creates or upgrades the schema and the others find it done. Opening
an up-to-date index, the common case, takes no lock.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Final, TypeVar

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from musiq_daemon.errors import DiskFullError, IndexDatabaseError
from musiq_daemon.index.location import (
    BUSY_TIMEOUT_S,
    default_url,
    head_revision,
    known_revisions,
    migrations_dir,
    missing_index,
    sqlite_file,
    url_for,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "IN_CHUNK",
    "SCHEMA_LOCK_KEY",
    "IndexDB",
    "current_revision",
    "default_url",
    "head_revision",
    "in_chunks",
    "migrations_dir",
    "open_index",
    "schema_lock",
    "schema_lock_file",
    "upgrade",
    "url_for",
]

#: Values bound in one ``IN (...)``: databases limit the parameters of a statement (SQLite builds to 999 or
#: 32766, PostgreSQL through psycopg to 65535).
IN_CHUNK: Final = 500
_T = TypeVar("_T")


def in_chunks(items: Sequence[_T], size: int = IN_CHUNK) -> Iterator[Sequence[_T]]:
    """``items`` in slices short enough to bind in one statement."""
    for start in range(0, len(items), size):
        yield items[start : start + size]


#: PostgreSQL's advisory-lock key for creating or upgrading the schema. Advisory keys are one namespace per
#: database, shared with every other program using it: a 64-bit hash of a fixed string keeps clear of theirs.
SCHEMA_LOCK_KEY = int.from_bytes(hashlib.sha256(b"musiqd schema").digest()[:8], "big", signed=True)


def _enable_wal(cursor: sqlite3.Cursor) -> None:
    """``PRAGMA journal_mode=WAL``, retried while another connection holds the lock it needs.

    Switching a new file to WAL takes an exclusive lock, and SQLite reports "database is locked" at once,
    without its busy handler, when another process switches the same new file at the same moment (several
    processes opening one new index). An index already in WAL mode needs no lock: the first try succeeds.
    """
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    while True:
        try:
            cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
            return
        except sqlite3.OperationalError as exc:
            busy = exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY  # also its extended codes
            if not busy or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        _enable_wal(cursor)
        cursor.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA synchronous=NORMAL")  # durable with WAL across application crashes
        cursor.close()


def _make_engine(url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise IndexDatabaseError(
            f"invalid database URL '{url}': use a file path or e.g. postgresql+psycopg://host/db"
        ) from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:":
            path = Path(database)
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise IndexDatabaseError(
                    f"cannot create the index folder {path.parent}: {exc.strerror}"
                ) from None
            if path.exists() and not os.access(path, os.R_OK):
                raise IndexDatabaseError(f"cannot read the index {path}: permission denied")
        # SQLite's own Python-level timeout, plus isolation handled by SQLAlchemy.
        kwargs["connect_args"] = {"timeout": BUSY_TIMEOUT_S}
    try:
        engine = create_engine(url, **kwargs)
    except (NoSuchModuleError, ModuleNotFoundError) as exc:
        hint = (
            "; run .venv/bin/pip install -e '.[postgresql]' in the musiqd checkout"
            if parsed.get_backend_name() == "postgresql"
            else ""
        )
        raise IndexDatabaseError(f"no database driver for '{parsed.drivername}': {exc}{hint}") from None
    if parsed.get_backend_name() == "sqlite":
        event.listen(engine, "connect", _sqlite_pragmas)
    return engine


def _alembic_config(engine: Engine | None = None) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    """The schema revision recorded in the database (None for a new, empty one)."""
    if "alembic_version" not in inspect(engine).get_table_names():
        return None
    with engine.connect() as connection:
        return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def upgrade(engine: Engine) -> None:
    from alembic import command

    command.upgrade(_alembic_config(engine), "head")


def schema_lock_file(url: str | URL) -> Path | None:
    """The lock file for creating or upgrading the SQLite index at ``url`` (None: not a SQLite file).

    Not ``<index>.lock``: the daemon holds that one for its lifetime (``daemon.lock``), and opens the index
    while holding it.
    """
    parsed = make_url(url)
    database = parsed.database
    if parsed.get_backend_name() != "sqlite" or not database or database == ":memory:":
        return None
    if database.startswith("file:"):  # a SQLite URI (?uri=true): no plain path to put a file next to
        return None
    return Path(f"{database}.schema.lock")


def _wait_for(try_lock: Callable[[], bool], shown: str) -> None:
    """Call ``try_lock`` until it succeeds, for at most BUSY_TIMEOUT_S (then a one-line error)."""
    deadline = time.monotonic() + BUSY_TIMEOUT_S
    delay = 0.005
    while not try_lock():
        if time.monotonic() >= deadline:
            raise IndexDatabaseError(
                f"another musiqd is creating or upgrading the index {shown} (waited {BUSY_TIMEOUT_S} s); "
                "try again when it has finished"
            )
        time.sleep(delay)
        delay = min(delay * 2, 0.1)


def _try_flock(fd: int) -> bool:
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


@contextmanager
def _file_lock(path: Path, shown: str) -> Iterator[None]:
    """An exclusive flock on ``path``, created if needed and never deleted (deleting a lock file races: a
    process could lock the old, unlinked file while another creates and locks a new one)."""
    fd: int | None
    try:
        # 0o666 less the umask: everyone sharing the index through a group can take the lock too.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
    except OSError:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)  # someone else's lock file: flock needs no write
        except OSError:
            # A read-only folder: this process cannot create or upgrade the index there anyway, and the
            # checks under the lock give their usual errors.
            fd = None
    try:
        if fd is not None:
            with suppress(OSError):  # a file system without flock: proceed as without the lock
                _wait_for(partial(_try_flock, fd), shown)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing drops the flock


@contextmanager
def _advisory_lock(engine: Engine, shown: str) -> Iterator[None]:
    """PostgreSQL's session-level advisory lock SCHEMA_LOCK_KEY, on a connection of its own.

    Not a transaction-level lock: Alembic (``migrations/env.py``) takes its own connection from the engine
    and commits its own transaction, so the lock cannot live in that transaction; and a transaction held
    open on another connection for the whole upgrade would sit "idle in transaction", which servers may be
    set to end (idle_in_transaction_session_timeout), releasing the lock halfway. The lock connection runs
    in autocommit, holds the session lock until the explicit unlock, and the server drops it if this
    process dies (its connection closes). Tried without blocking, with the same timeout as SQLite's.
    """
    connection = engine.connect()
    try:
        connection.execution_options(isolation_level="AUTOCOMMIT")
        _wait_for(
            lambda: bool(
                connection.execute(
                    text("SELECT pg_try_advisory_lock(:key)"), {"key": SCHEMA_LOCK_KEY}
                ).scalar()
            ),
            shown,
        )
        try:
            yield
        finally:
            try:
                connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": SCHEMA_LOCK_KEY})
            except DBAPIError:
                connection.invalidate()  # a broken session: closing it is what releases the lock
    finally:
        connection.close()


@contextmanager
def schema_lock(engine: Engine, shown: str | None = None) -> Iterator[None]:
    """Hold the cross-process lock for creating or upgrading the schema of ``engine``'s database.

    SQLite: an flock on :func:`schema_lock_file` (none in a read-only folder, nor for an in-memory
    database). PostgreSQL: an advisory lock. Other servers: no lock. Waits at most BUSY_TIMEOUT_S, then
    raises :class:`IndexDatabaseError`.
    """
    shown = shown or engine.url.render_as_string(hide_password=True)
    if engine.dialect.name == "postgresql":
        with _advisory_lock(engine, shown):
            yield
        return
    path = schema_lock_file(engine.url)
    if path is None:
        yield
        return
    with _file_lock(path, shown):
        yield


def _check_and_upgrade(engine: Engine, shown: str, *, upgrade_schema: bool) -> None:
    """Bring the schema to head, or say why not; under :func:`schema_lock`."""
    head, known = known_revisions()
    current = current_revision(engine)
    if current == head:
        return  # another process created or upgraded it while this one waited for the lock
    if current is not None and current not in known:
        raise IndexDatabaseError(
            f"the index {shown} was written by a newer musiqd (schema {current}): upgrade musiqd"
        )
    if current is None and "photos" in inspect(engine).get_table_names():
        raise IndexDatabaseError(
            f"{shown} has tables but no musiqd schema version: is it another program's database?"
        )
    if not upgrade_schema:
        raise IndexDatabaseError(f"the index {shown} needs an upgrade: run 'musiqd db upgrade'")
    upgrade(engine)


@dataclass
class IndexDB:
    """An open, up-to-date index."""

    url: str
    engine: Engine
    sessions: sessionmaker[Session]

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A session in one transaction: committed on success, rolled back on error."""
        with self.sessions.begin() as session:
            yield session

    def close(self) -> None:
        if self.engine.dialect.name == "sqlite":
            # Keeps the query planner's statistics current (SQLite's advice for every connection it closes):
            # without them a million-row export sorts in a temp B-tree instead of walking the path index.
            # analysis_limit bounds the cost to milliseconds per table.
            try:
                with self.engine.connect() as connection:
                    connection.exec_driver_sql("PRAGMA analysis_limit=1000")
                    connection.exec_driver_sql("PRAGMA optimize")
            except DBAPIError:
                pass  # a read-only index or a busy writer: statistics can wait for the next close
        self.engine.dispose()


def open_index(database: str | None = None, *, upgrade_schema: bool = True, create: bool = True) -> IndexDB:
    """Open (creating or upgrading as needed) the index at ``database`` (URL or path; default per docs).
    ``create=False``: a SQLite file that does not exist is an error instead of a new index."""
    url = url_for(database)
    path = sqlite_file(url)
    if not create and path is not None and not path.exists():
        raise missing_index(path)
    engine = _make_engine(url)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        if current_revision(engine) != known_revisions()[0]:  # up to date: no lock (the common case)
            with schema_lock(engine, shown):
                _check_and_upgrade(engine, shown, upgrade_schema=upgrade_schema)
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        if path is not None and disk_full(path):
            raise DiskFullError(
                f"cannot open the index {shown}: its disk is full ({reason}); free some space"
            ) from None
        raise IndexDatabaseError(f"cannot open the index {shown}: {reason}") from None
    except IndexDatabaseError:
        engine.dispose()
        raise
    return IndexDB(url, engine, sessionmaker(engine, expire_on_commit=False))


def disk_full(path: Path) -> bool:
    """Whether the file system holding ``path`` (a SQLite index) has no room left: SQLite reports a full disk
    as "disk I/O error" when it cannot grow its journal, which says nothing useful on its own."""
    try:
        info = os.statvfs(path.parent if path.parent.exists() else path.parent.parent)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < 1_000_000
