"""Where the index is and which schema this musiqd knows: plain Python, no database library.

`musiqd query` reads an up-to-date SQLite index with the standard library alone (``index.reader``); what
it needs to find the file and check its schema version lives here, so that it starts without SQLAlchemy.
"""

from __future__ import annotations

import os
import re
from importlib import resources
from pathlib import Path
from urllib.parse import unquote

from musiq_daemon.errors import IndexDatabaseError
from musiq_daemon.paths import data_dir

#: Seconds a writer or reader waits for a lock before giving up (the daemon writes while users query).
BUSY_TIMEOUT_S = 30

_SQLITE_FILE_URL = re.compile(r"^sqlite(?:\+pysqlite)?:///(?P<path>[^?]+)$")


def as_url(database: str) -> str:
    """A SQLAlchemy URL as it is; anything else is a file path (SQLite)."""
    if "://" in database:
        return database
    return f"sqlite:///{Path(database).expanduser().resolve()}"


def default_url() -> str:
    """``$MUSIQD_DATABASE_URL`` (a URL or a file path, like ``--db``), else ``<data dir>/index.sqlite3``."""
    url = os.environ.get("MUSIQD_DATABASE_URL")
    if url:
        return as_url(url)
    return f"sqlite:///{data_dir() / 'index.sqlite3'}"


def url_for(database: str | None) -> str:
    """A user's ``--db`` value: a SQLAlchemy URL or a file path (SQLite)."""
    return as_url(database) if database else default_url()


def sqlite_file(url: str) -> Path | None:
    """The file of a plain SQLite file URL (no driver options); None for anything else."""
    match = _SQLITE_FILE_URL.match(url)
    if match is None or match["path"] == ":memory:":
        return None
    return Path(unquote(match["path"]))


def missing_index(path: Path) -> IndexDatabaseError:
    """The error for a command that reads an index which does not exist (it never creates one: a typo in
    ``--db``, or another user's default data folder, would otherwise answer from a new empty index)."""
    return IndexDatabaseError(
        f"no index at {path}: nothing has been scored with it yet (run 'musiqd score PATH' or the daemon), "
        "or give the index you mean with --db or MUSIQD_DATABASE_URL (another user's default index is in "
        "that user's data folder)"
    )


def migrations_dir() -> Path:
    packaged = resources.files("musiq_daemon").joinpath("data/migrations")
    if packaged.is_dir():
        return Path(str(packaged))
    return Path(__file__).resolve().parent.parent.parent / "migrations"


_REVISION_RE = re.compile(r'^(revision|down_revision)\s*=\s*(?:"([^"]*)"|None)', re.MULTILINE)


def known_revisions() -> tuple[str, set[str]]:
    """(head, every revision this musiqd knows), read from the migration files' headers.

    Reading two assignments per file avoids importing Alembic and every migration on each start-up:
    opening an up-to-date index is the common case and `musiqd query` must start fast. A test checks
    the result against Alembic's own view.
    """
    revisions: dict[str, str | None] = {}
    for path in sorted((migrations_dir() / "versions").glob("*.py")):
        found = {key: value or None for key, value in _REVISION_RE.findall(path.read_text("utf-8"))}
        if found.get("revision"):
            revisions[str(found["revision"])] = found.get("down_revision")
    parents = {parent for parent in revisions.values() if parent}
    heads = [rev for rev in revisions if rev not in parents]
    if len(heads) != 1:
        raise RuntimeError(f"expected one migration head in {migrations_dir()}, found {heads}")
    return heads[0], set(revisions)


def head_revision() -> str:
    return known_revisions()[0]
