"""Opening the index: SQLite by default (WAL, busy timeout, foreign keys), any SQLAlchemy URL otherwise.

The schema is versioned with Alembic (``migrations/``). Opening a database created by an older musiqd
upgrades it; one created by a newer musiqd is refused with a clear message (never downgraded silently).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import Session, sessionmaker

from musiq_daemon.errors import IndexDatabaseError
from musiq_daemon.index.location import (
    BUSY_TIMEOUT_S,
    default_url,
    head_revision,
    known_revisions,
    migrations_dir,
    url_for,
)

__all__ = [
    "BUSY_TIMEOUT_S",
    "IndexDB",
    "current_revision",
    "default_url",
    "head_revision",
    "migrations_dir",
    "open_index",
    "upgrade",
    "url_for",
]


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer, nor it them
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


def open_index(database: str | None = None, *, upgrade_schema: bool = True) -> IndexDB:
    """Open (creating or upgrading as needed) the index at ``database`` (URL or path; default per docs)."""
    url = url_for(database)
    engine = _make_engine(url)
    shown = make_url(url).render_as_string(hide_password=True)
    try:
        current = current_revision(engine)
        head, known = known_revisions()
        if current != head:
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
    except DBAPIError as exc:
        engine.dispose()
        reason = str(exc.orig).splitlines()[0] if exc.orig is not None else type(exc).__name__
        raise IndexDatabaseError(f"cannot open the index {shown}: {reason}") from None
    except IndexDatabaseError:
        engine.dispose()
        raise
    return IndexDB(url, engine, sessionmaker(engine, expire_on_commit=False))
