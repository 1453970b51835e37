"""The daemon's state row: what ``musiqd status`` shows, and the pause flag.

One row of the index (``daemon_state``, id 1). The daemon writes it at start-up, every heartbeat and on
stopping; ``musiqd pause`` and ``resume`` set its pause flag, which the daemon reads every second (a pause
set while no daemon runs holds from its next start). Going through the index, these work from any user
and machine that can open it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from musiq_daemon.index.models import DaemonState

if TYPE_CHECKING:
    from musiq_daemon.index.db import IndexDB

STATE_ROW: Final = 1


def read_state(db: IndexDB) -> DaemonState | None:
    with db.session() as session:
        return session.get(DaemonState, STATE_ROW)


def write_state(db: IndexDB, **values: Any) -> None:
    """Update the state row, creating it when needed."""
    with db.session() as session:
        row = session.get(DaemonState, STATE_ROW)
        if row is None:
            row = DaemonState(id=STATE_ROW, state="stopped", paused=False, done=0, failed=0, busy_s=0.0)
            session.add(row)
        for key, value in values.items():
            setattr(row, key, value)


def set_paused(db: IndexDB, paused: bool) -> None:
    write_state(db, paused=paused)


__all__ = ["STATE_ROW", "read_state", "set_paused", "write_state"]
