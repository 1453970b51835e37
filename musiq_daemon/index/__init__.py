"""The SQLite (or any SQLAlchemy database) index of photos, scores, jobs and musiqd's own writes."""

from musiq_daemon.index.db import IndexDB, open_index
from musiq_daemon.index.queries import (
    IndexStats,
    ModelStats,
    ResultRow,
    ScoreQuery,
    iter_paths,
    run_query,
    stats,
)

__all__ = [
    "IndexDB",
    "IndexStats",
    "ModelStats",
    "ResultRow",
    "ScoreQuery",
    "iter_paths",
    "open_index",
    "run_query",
    "stats",
]
