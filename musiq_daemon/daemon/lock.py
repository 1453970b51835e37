"""One watcher per root: the daemon's locks.

Any number of scoring processes share an index's queue (``musiqd worker``), but each root has one
watcher: two would queue every new photo twice and fight over what is missing. The daemon takes one lock
per root it watches:

* an exclusive ``flock`` on a lock file next to the SQLite index (``<index>.watch-<hash of the root>.lock``)
  or, for a database server, in the data directory keyed by a hash of the URL and the root; the kernel
  drops it when the process dies, also on kill -9, so a stale lock never blocks a restart. The lock file
  holds the pid for the error message and for ``musiqd status`` (:func:`daemon_running`);
* on PostgreSQL also an advisory lock keyed by the root, held on a connection of its own for the
  daemon's lifetime: daemons on other machines sharing the index see it (the server drops it with the
  connection when a daemon dies).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from musiq_daemon.errors import AlreadyRunningError, MusiqError
from musiq_daemon.paths import data_dir


def _root_key(root: Path) -> str:
    return hashlib.sha256(os.fsencode(os.path.abspath(root))).hexdigest()[:16]


def lock_path(url: str, root: Path) -> Path:
    """Where the watcher lock of ``root`` on the index at ``url`` lives."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(f"{parsed.database}.watch-{_root_key(root)}.lock")
    shown = parsed.render_as_string(hide_password=True)
    return (
        data_dir()
        / "locks"
        / f"{hashlib.sha256((shown + '|' + _root_key(root)).encode()).hexdigest()[:16]}.lock"
    )


def advisory_key(root: Path) -> int:
    """PostgreSQL's advisory-lock key of a root (a signed 64-bit number)."""
    digest = hashlib.sha256(b"musiqd watch " + os.fsencode(os.path.abspath(root))).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class InstanceLock:
    """An exclusive flock held for the daemon's lifetime: one root's watcher (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, url: str, root: Path) -> InstanceLock:
        path = lock_path(url, root)
        shown = make_url(url).render_as_string(hide_password=True)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise MusiqError(f"cannot lock {path}: {exc.strerror}") from None
            pid = lock_holder(path)
            raise AlreadyRunningError(
                f"another musiqd already watches {root} with the index {shown} (pid {pid or 'unknown'}); "
                "more processes can score the same queue with 'musiqd worker'"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        return cls(path, fd)

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)  # closing drops the flock
            self._fd = -1


def lock_holder(path: Path) -> int | None:
    """The pid written in a lock file (None when unreadable)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


class PgRootLock:
    """PostgreSQL advisory locks of the roots, held on a connection of their own (see the module doc)."""

    def __init__(self, connection: Any) -> None:
        self._connection = connection

    @classmethod
    def acquire(cls, url: str, roots: Sequence[Path]) -> PgRootLock | None:
        """None for a database that is not PostgreSQL (SQLite is one machine: the flocks suffice)."""
        if make_url(url).get_backend_name() != "postgresql":
            return None
        from sqlalchemy import create_engine, text

        engine = create_engine(url, poolclass=NullPool)
        connection = engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        for root in roots:
            taken = connection.execute(
                text("SELECT pg_try_advisory_lock(:key)"), {"key": advisory_key(root)}
            ).scalar()
            if not taken:
                connection.close()
                engine.dispose()
                raise AlreadyRunningError(
                    f"another musiqd (on this or another machine) already watches {root} with this index; "
                    "more processes can score the same queue with 'musiqd worker'"
                )
        return cls(connection)

    def release(self) -> None:
        self._connection.close()  # ends the session: the server drops its advisory locks


class RootLocks:
    """Every root's lock for the daemon's lifetime."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._files: dict[Path, InstanceLock] = {}
        self._pg: PgRootLock | None = None

    @classmethod
    def acquire(cls, url: str, roots: Sequence[Path]) -> RootLocks:
        locks = cls(url)
        try:
            locks.update(roots)
        except BaseException:
            locks.release()
            raise
        return locks

    def update(self, roots: Sequence[Path]) -> None:
        """Hold the locks of exactly ``roots`` (a reload may add and drop roots); raises
        :class:`AlreadyRunningError` for a root another daemon watches, holding what it held before."""
        wanted = {Path(os.path.abspath(r)) for r in roots}
        added = {r: InstanceLock.acquire(self.url, r) for r in sorted(wanted - self._files.keys())}
        try:
            pg = PgRootLock.acquire(self.url, sorted(wanted))
        except BaseException:
            for lock in added.values():
                lock.release()
            raise
        for root in set(self._files) - wanted:
            self._files.pop(root).release()
        self._files.update(added)
        if self._pg is not None:
            self._pg.release()
        self._pg = pg

    def release(self) -> None:
        for lock in self._files.values():
            lock.release()
        self._files.clear()
        if self._pg is not None:
            self._pg.release()
            self._pg = None


def daemon_running(url: str, roots: Sequence[Path]) -> bool | None:
    """A daemon on this machine holds the watcher lock of one of ``roots`` (a shared lock is tried, and
    dropped); None when there is no lock file to ask."""
    answers = []
    for root in roots:
        try:
            fd = os.open(lock_path(url, root), os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return True
        finally:
            os.close(fd)
        answers.append(False)
    return False if answers else None


__all__ = [
    "InstanceLock",
    "PgRootLock",
    "RootLocks",
    "advisory_key",
    "daemon_running",
    "lock_holder",
    "lock_path",
]
