"""musiqd: MUSIQ image-quality scores for photo libraries.

The library API: :func:`score`, :func:`score_batch`, :class:`Scorer` and :class:`ScoreRecord`
(see :mod:`musiq_daemon.api`). Imported lazily so that ``import musiq_daemon`` stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from musiq_daemon.version import __version__

__all__ = ["ScoreFailure", "ScoreRecord", "Scorer", "__version__", "score", "score_batch"]

if TYPE_CHECKING:
    from musiq_daemon.api import ScoreFailure, Scorer, ScoreRecord, score, score_batch


def __getattr__(name: str) -> Any:
    if name in __all__:
        from musiq_daemon import api

        return getattr(api, name)
    raise AttributeError(f"module 'musiq_daemon' has no attribute {name!r}")
