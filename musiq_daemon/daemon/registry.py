"""The registry of scoring processes (table ``workers``): who scores, where, how fast.

Every process that scores (``musiqd worker`` on any machine, and the daemon for its own workers) keeps
one row, written at start, every heartbeat and on stopping. ``musiqd status`` lists the rows whose
heartbeat is recent; a row of a process that died stays behind, marked by its old heartbeat.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

from sqlalchemy import select

from musiq_daemon.daemon.queue import owner_gone
from musiq_daemon.index.models import WorkerRow

if TYPE_CHECKING:
    from musiq_daemon.index.db import IndexDB

#: A row older than this (three heartbeats) belongs to a process that is gone.
STALE_AFTER_S: Final = 15.0


@dataclass(frozen=True)
class Registration:
    owner: str  # the lease owner of its jobs (queue.owner_id)
    kind: str  # "daemon" or "worker"
    device: str | None
    models: str
    path_map: str | None
    roots: str | None = None  # a watcher's roots (JSON)


def register(db: IndexDB, who: Registration) -> None:
    moment = datetime.now(UTC)
    with db.session() as session:
        row = session.get(WorkerRow, who.owner)
        if row is None:
            row = WorkerRow(id=who.owner, started_at=moment)
            session.add(row)
        row.host, row.pid, row.kind = socket.gethostname(), os.getpid(), who.kind
        row.device, row.models, row.path_map, row.roots = who.device, who.models, who.path_map, who.roots
        row.state, row.heartbeat_at, row.done, row.failed, row.busy_s = "running", moment, 0, 0, 0.0


def beat(db: IndexDB, owner: str, *, state: str, done: int, failed: int, busy_s: float) -> None:
    with db.session() as session:
        row = session.get(WorkerRow, owner)
        if row is not None:
            row.state, row.heartbeat_at = state, datetime.now(UTC)
            row.done, row.failed, row.busy_s = done, failed, busy_s


def live(db: IndexDB, *, now: datetime | None = None) -> list[WorkerRow]:
    """Rows of processes that are still beating, oldest first: a recent heartbeat, and (for a process of
    this machine) a pid that still exists, so that a process killed seconds ago is not listed."""
    since = (now or datetime.now(UTC)) - timedelta(seconds=STALE_AFTER_S)
    with db.session() as session:
        rows = session.scalars(
            select(WorkerRow)
            .where(WorkerRow.heartbeat_at >= since, WorkerRow.state != "stopped")
            .order_by(WorkerRow.started_at)
        )
        return [row for row in rows if not owner_gone(row.id)]


__all__ = ["STALE_AFTER_S", "Registration", "beat", "live", "register"]
