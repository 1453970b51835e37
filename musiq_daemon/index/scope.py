"""What ``--under PATH`` means in the index's columns, for the queries of every command.

Photos are stored as (root, path relative to the root). A folder given on the command line can be a root,
lie above roots (every photo of those roots), or lie inside a root (photos of that root whose relative path
is the folder or starts with it). Prefixes end in ``/``: ``2023`` never matches ``2023-trip``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from musiq_daemon.index.paths import decode_path, encode_path


@dataclass(frozen=True)
class Scope:
    """Photos whose root is ``root`` or lies below it (``rel is None``), or whose root is ``root`` and
    whose relative path is ``rel`` or lies below it."""

    root: str  # encode_path form
    rel: str | None = None

    @property
    def prefix(self) -> str:
        """The text every stored value below this scope starts with (root or relative path + ``/``)."""
        return (self.root if self.rel is None else self.rel).rstrip("/") + "/"


def scopes_under(under: Path, roots: Iterable[str]) -> list[Scope]:
    """The scopes of ``under`` (absolute, or relative to the current directory) given the stored roots."""
    target = Path(os.path.abspath(under))
    scopes = [Scope(encode_path(target))]
    for root in roots:
        root_path = Path(decode_path(root))
        if target != root_path and target.is_relative_to(root_path):
            scopes.append(Scope(root, encode_path(target.relative_to(root_path))))
    return scopes
