"""Reading the index with SQL: the standard library's sqlite3 for an up-to-date SQLite file, SQLAlchemy
for anything else (PostgreSQL, or an index that needs an upgrade first).

`musiqd query` is a command people type: it must answer at once. Importing SQLAlchemy alone takes longer
than the whole query on a NAS's CPU, so the common case (the default SQLite index, schema current) never
imports it. The SQL is written once, portable between SQLite and PostgreSQL, and runs through either.

Timestamps: SQLite keeps them as UTC text (``YYYY-MM-DD HH:MM:SS.ffffff``, SQLAlchemy's own format, which
sorts like the time); PostgreSQL as ``timestamptz``. :meth:`Reader.bind_time` and :func:`read_time` do the
conversions, so results are always zone-aware UTC datetimes.
"""

from __future__ import annotations

import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musiq_daemon.errors import IndexDatabaseError
from musiq_daemon.index.location import BUSY_TIMEOUT_S, known_revisions, missing_index, sqlite_file, url_for

if TYPE_CHECKING:
    from musiq_daemon.index.db import IndexDB

_SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"


def read_time(value: Any) -> datetime | None:
    """A timestamp column's value as a zone-aware UTC datetime."""
    if value is None:
        return None
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    assert isinstance(value, datetime)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Reader(ABC):
    """Read-only SQL on an index. ``rows`` streams results in batches (constant memory)."""

    dialect: str = "sqlite"

    @abstractmethod
    def rows(self, sql: str, params: Mapping[str, Any], *, batch: int = 2000) -> Iterator[Sequence[Any]]:
        """The rows of ``sql`` with ``params`` (named, ``:name``), fetched ``batch`` at a time."""

    def bind_time(self, value: datetime) -> Any:
        """A zone-aware datetime as the database compares it."""
        if value.tzinfo is None:
            raise ValueError("naive datetime given to the index: attach a time zone")
        if self.dialect == "sqlite":
            return value.astimezone(UTC).strftime(_SQLITE_TIME)
        return value

    @abstractmethod
    def close(self) -> None:
        """Release the connection (a reader made from an IndexDB leaves the IndexDB open)."""


class SqliteReader(Reader):
    """An existing SQLite index through the standard library: never creates, upgrades or writes it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            # mode=rw: an absent file is an error, not a new empty index; a write-protected one is opened
            # read-only by SQLite itself. The WAL journal mode is the index's own (set when it was created).
            self.connection = sqlite3.connect(
                f"{path.as_uri()}?mode=rw", uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None
            )
            self.connection.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_S * 1000}")
        except sqlite3.Error as exc:
            raise IndexDatabaseError(f"cannot open the index {path}: {exc}") from None

    def revision(self) -> str | None:
        """The schema revision recorded in the index (None if it has none)."""
        try:
            row = self.connection.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return None
            raise IndexDatabaseError(f"cannot open the index {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:
            raise IndexDatabaseError(f"cannot open the index {self.path}: {exc}") from None
        return None if row is None else str(row[0])

    def rows(self, sql: str, params: Mapping[str, Any], *, batch: int = 2000) -> Iterator[Sequence[Any]]:
        try:
            cursor = self.connection.execute(sql, dict(params))
            while chunk := cursor.fetchmany(batch):
                yield from chunk
        except sqlite3.DatabaseError as exc:
            raise IndexDatabaseError(f"cannot read the index {self.path}: {exc}") from None

    def close(self) -> None:
        self.connection.close()


class EngineReader(Reader):
    """The same SQL through an open index's SQLAlchemy engine (PostgreSQL, or SQLite from Python)."""

    def __init__(self, db: IndexDB, *, owned: bool = False) -> None:
        self.db = db
        self.owned = owned
        self.dialect = db.engine.dialect.name

    def rows(self, sql: str, params: Mapping[str, Any], *, batch: int = 2000) -> Iterator[Sequence[Any]]:
        from sqlalchemy import text

        with self.db.engine.connect() as connection:
            yield from connection.execution_options(yield_per=batch).execute(text(sql), dict(params))

    def close(self) -> None:
        if self.owned:
            self.db.close()


def as_reader(source: IndexDB | Reader) -> Reader:
    """A reader on ``source``: itself, or the SQL path of an open index (left open)."""
    return source if isinstance(source, Reader) else EngineReader(source)


def open_reader(database: str | None = None) -> Reader:
    """A reader on the index at ``database`` (URL or path, as ``--db``); it must exist.

    An up-to-date SQLite file is read with sqlite3 alone. Anything else goes through
    :func:`musiq_daemon.index.db.open_index`, which upgrades an older index or refuses a newer one.
    """
    url = url_for(database)
    path = sqlite_file(url)
    if path is not None:
        if not path.exists():
            raise missing_index(path)
        reader = SqliteReader(path)
        try:
            current = reader.revision()
        except IndexDatabaseError:
            reader.close()
            raise
        if current == known_revisions()[0]:
            return reader
        reader.close()  # older, newer or not ours: open_index says which, and upgrades an older one
    from musiq_daemon.index.db import open_index

    return EngineReader(open_index(database), owned=True)
