"""One daemon per index: the single-instance lock.

An exclusive ``flock`` on a lock file next to the SQLite index (``<index>.lock``), or, for a database
server, in the data directory keyed by a hash of the URL. The kernel drops the lock when the process
dies, also on kill -9, so a stale lock never blocks a restart. The lock file holds the pid for the error
message and for ``musiqd status``, which asks the lock whether a daemon runs (:func:`daemon_running`).
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
from pathlib import Path

from sqlalchemy.engine import make_url

from musiq_daemon.errors import AlreadyRunningError, MusiqError
from musiq_daemon.paths import data_dir


def lock_path(url: str) -> Path:
    """Where the single-instance lock of the index at ``url`` lives."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(f"{parsed.database}.lock")
    shown = parsed.render_as_string(hide_password=True)
    return data_dir() / "locks" / f"{hashlib.sha256(shown.encode()).hexdigest()[:16]}.lock"


class InstanceLock:
    """An exclusive flock held for the daemon's lifetime (see the module doc)."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path, self._fd = path, fd

    @classmethod
    def acquire(cls, url: str) -> InstanceLock:
        path = lock_path(url)
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
                f"another musiqd is already running on {shown} (pid {pid if pid else 'unknown'})"
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


def daemon_running(url: str) -> bool | None:
    """A daemon holds the lock of this index on this machine (a shared lock is tried, and dropped); None
    when there is no lock file to ask."""
    path = lock_path(url)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


__all__ = ["InstanceLock", "daemon_running", "lock_holder", "lock_path"]
