"""The daemon under systemd: log lines journald understands, and the notification protocol.

Logging: under journald (``$JOURNAL_STREAM`` names stderr), each line starts with ``<priority>``, which
journald takes as the entry's priority (``journalctl -p``) and strips; elsewhere a line has its time.

Notifications (``sd_notify``): ``READY=1`` once the initial scan has queued everything, ``STATUS=`` for
``systemctl status``, ``WATCHDOG=1`` every half ``$WATCHDOG_USEC``, ``EXTEND_TIMEOUT_USEC=`` while a
long first scan runs, ``STOPPING=1``. Outside systemd they are silently dropped.
"""

from __future__ import annotations

import logging
import os
import socket
import sys
from collections.abc import Mapping
from typing import Final

from musiq_daemon.native_log import STDERR_LOCK

log = logging.getLogger("musiqd")

# --- logging -----------------------------------------------------------------------------------------------

_SYSLOG_PRIORITY: Final = {"DEBUG": 7, "INFO": 6, "WARNING": 4, "ERROR": 3, "CRITICAL": 2}


class JournalFormatter(logging.Formatter):
    """``<priority>LEVEL message``: journald takes the prefix as the entry's priority (``journalctl -p``)
    and strips it; it adds the time itself."""

    def format(self, record: logging.LogRecord) -> str:
        prio = _SYSLOG_PRIORITY.get(record.levelname, 6)
        return f"<{prio}>{record.levelname} {super().format(record)}"


class StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now, so that log lines go above a running progress bar, and
    never while the inference runtime has silenced file descriptor 2 (``native_log.STDERR_LOCK``)."""

    def emit(self, record: logging.LogRecord) -> None:
        with STDERR_LOCK:
            self.setStream(sys.stderr)
            super().emit(record)


def under_journal(env: Mapping[str, str] = os.environ) -> bool:
    """stderr is connected to journald ($JOURNAL_STREAM names stderr's device and inode)."""
    value = env.get("JOURNAL_STREAM", "")
    try:
        dev, ino = (int(part) for part in value.split(":"))
        info = os.fstat(2)
    except (ValueError, OSError):
        return False
    return (info.st_dev, info.st_ino) == (dev, ino)


def configure_logging(verbose: bool = False) -> None:
    handler = StderrHandler()
    if under_journal():
        handler.setFormatter(JournalFormatter("%(message)s"))
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Their INFO lines are one per event (watchdog) or plugin (alembic): noise in a service's journal.
    logging.getLogger("watchdog").setLevel(logging.WARNING)
    logging.getLogger("alembic").setLevel(logging.WARNING)
    # Pillow's DEBUG lines dump every EXIF tag of every photo read (a burst's features): not ours to debug.
    logging.getLogger("PIL").setLevel(logging.INFO)


# --- notifications -----------------------------------------------------------------------------------------


def sd_notify(message: str, env: Mapping[str, str] = os.environ) -> bool:
    """Send ``message`` (e.g. ``READY=1``) to systemd's notification socket; False when not under
    systemd or the socket is unreachable. The protocol is one datagram on an AF_UNIX socket; ``@``
    names a socket in the abstract namespace."""
    address = env.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(message.encode(), address)
    except OSError as exc:
        log.debug("sd_notify failed: %s", exc)
        return False
    return True


def watchdog_interval(env: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between WATCHDOG=1 pings: half of $WATCHDOG_USEC, when the watchdog is meant for us."""
    usec = env.get("WATCHDOG_USEC", "")
    pid = env.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
        return None
    return int(usec) / 2e6


__all__ = [
    "JournalFormatter",
    "StderrHandler",
    "configure_logging",
    "sd_notify",
    "under_journal",
    "watchdog_interval",
]
