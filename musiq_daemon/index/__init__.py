"""The SQLite (or any SQLAlchemy database) index of photos, scores, jobs and musiqd's own writes.

Names are imported on first use: ``open_reader``, ``run_query`` and the query types need no SQLAlchemy,
so ``musiqd query`` starts without it.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from musiq_daemon.index.db import IndexDB, open_index
    from musiq_daemon.index.queries import ResultRow, ScoreQuery, iter_paths, run_query
    from musiq_daemon.index.reader import Reader, open_reader
    from musiq_daemon.index.summary import IndexStats, ModelStats, stats

_HOMES = {
    "IndexDB": "db",
    "open_index": "db",
    "ResultRow": "queries",
    "ScoreQuery": "queries",
    "iter_paths": "queries",
    "run_query": "queries",
    "Reader": "reader",
    "open_reader": "reader",
    "IndexStats": "summary",
    "ModelStats": "summary",
    "stats": "summary",
}

__all__ = [
    "IndexDB",
    "IndexStats",
    "ModelStats",
    "Reader",
    "ResultRow",
    "ScoreQuery",
    "iter_paths",
    "open_index",
    "open_reader",
    "run_query",
    "stats",
]


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'musiq_daemon.index' has no attribute '{name}'")
    return getattr(import_module(f"musiq_daemon.index.{home}"), name)
