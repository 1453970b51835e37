"""Finding photos: which names are photos (:class:`PathFilter`) and the one folder walker (:func:`walk`).

``musiqd score`` (:func:`iter_photos`), the daemon's reconciliation scan, its polling watcher and its
handling of folders moved into a root all find photos here, so they agree on what a photo is.

Filters match names (one file or folder name, never a path), case-insensitively: NAS shares are often
case-insensitive, and ``IMG_0001.JPG`` and ``.XMP`` are as common as their lower-case forms. A folder whose
name is excluded is skipped with everything under it.

The walker never follows a symbolic link to a folder: it could leave the root or loop. Symbolic links to
files are yielded only when asked (``follow_links``: ``musiqd score`` reads what a link points to; the
daemon does not, as a link may point out of its roots).
"""

from __future__ import annotations

import fnmatch
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from operator import attrgetter
from pathlib import Path
from typing import Final, NamedTuple, Protocol

from musiq_daemon.decode import SUPPORTED_SUFFIXES
from musiq_daemon.errors import UsageError
from musiq_daemon.metadata.safefile import TEMP_PREFIX

__all__ = [
    "DEFAULT_FILTER",
    "FilterSettings",
    "FoundFile",
    "PathFilter",
    "iter_photos",
    "walk",
]


class FilterSettings(Protocol):
    """What :meth:`PathFilter.of` reads: the daemon's :class:`~musiq_daemon.config.Config` has both."""

    @property
    def include(self) -> Sequence[str]: ...

    @property
    def exclude(self) -> Sequence[str]: ...


class PathFilter:
    """Which names are photos to score.

    File and folder names matching an ``exclude`` pattern are skipped (temp files of other programs, NAS
    junk folders such as @eaDir or #recycle, sidecars); musiqd's own temporary files always are.
    ``exclude_dirs`` patterns skip folders only. A file must have a supported photo suffix and, when
    ``include`` is given, match one of its patterns.
    """

    def __init__(
        self, include: Iterable[str] = (), exclude: Iterable[str] = (), *, exclude_dirs: Iterable[str] = ()
    ) -> None:
        excluded = [*exclude, TEMP_PREFIX + "*"]
        self._exclude = _compile(excluded)
        self._exclude_dirs = _compile([*excluded, *exclude_dirs])
        include = list(include)
        self._include = _compile(include) if include else None

    @classmethod
    def of(cls, settings: FilterSettings) -> PathFilter:
        """The filter of a configuration (its ``include`` and ``exclude``)."""
        return cls(settings.include, settings.exclude)

    def dir_excluded(self, name: str) -> bool:
        return self._exclude_dirs.match(name) is not None

    def file_wanted(self, name: str) -> bool:
        if self._exclude.match(name) is not None:
            return False
        dot = name.rfind(".")  # as Path.suffix, without building a Path per file of a big share
        if dot <= 0 or name[dot:].lower() not in SUPPORTED_SUFFIXES:
            return False
        return self._include is None or self._include.match(name) is not None

    def path_wanted(self, path: str, root: str) -> bool:
        """``path`` (absolute) is a wanted photo under ``root``: no excluded folder on the way."""
        rel = os.path.relpath(path, root)
        if rel.startswith("../") or rel in (".", ".."):
            return False
        *dirs, name = rel.split("/")
        return not any(self.dir_excluded(d) for d in dirs) and self.file_wanted(name)

    def folder_wanted(self, path: str, root: str) -> bool:
        """``path`` (absolute) is a folder under ``root`` (not the root itself) that would be walked: neither
        it nor a folder on the way is excluded."""
        rel = os.path.relpath(path, root)
        if rel.startswith("../") or rel in (".", ".."):
            return False
        return not any(self.dir_excluded(d) for d in rel.split("/"))


def _compile(patterns: Sequence[str]) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{fnmatch.translate(p)})" for p in patterns) or "(?!)", re.IGNORECASE)


#: :func:`iter_photos`'s filter unless given one: hidden files and folders, and folders whose names start
#: with ``@`` or ``#`` (NAS metadata and trash: @eaDir, #recycle, #snapshot) are skipped.
DEFAULT_FILTER: Final = PathFilter(exclude=[".*"], exclude_dirs=["@*", "#*"])


class FoundFile(NamedTuple):
    """A photo found by :func:`walk`."""

    entry: os.DirEntry[str]  # entry.path is the root joined with rel; entry.stat() caches its result
    rel: str  # the path relative to the root, "/"-separated


def walk(
    root: Path | str,
    path_filter: PathFilter,
    *,
    follow_links: bool = False,
    on_error: Callable[[str, str, OSError], None] | None = None,
    stop: threading.Event | None = None,
) -> Iterator[FoundFile]:
    """Every photo under ``root`` that ``path_filter`` wants, depth first: a folder's files in name order,
    then its subfolders in name order. Excluded folders are skipped with everything in them.

    Only regular files are yielded, unless ``follow_links``: then every entry that is not a folder or a
    symbolic link to one (links to files, and dangling links, which the reader then reports). Linked
    folders are never walked. A folder that cannot be listed (the root too) is skipped after
    ``on_error(folder, rel, error)``, which may raise to end the walk (``rel`` is "" for the root).
    ``stop``: checked before each folder; once set, the walk ends early.
    """
    pending = [(os.fspath(root), "")]
    while pending:
        if stop is not None and stop.is_set():
            return
        folder, rel_dir = pending.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=_NAME)
        except OSError as exc:
            if on_error is not None:
                on_error(folder, rel_dir, exc)
            continue
        subdirs = []
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if not path_filter.dir_excluded(entry.name):
                        subdirs.append((entry.path, f"{rel_dir}/{entry.name}" if rel_dir else entry.name))
                    continue
                if not path_filter.file_wanted(entry.name):
                    continue
                if not (entry.is_file(follow_symlinks=False) or (follow_links and not _links_to_dir(entry))):
                    continue
            except OSError:  # vanished between listing and looking at it
                continue
            yield FoundFile(entry, f"{rel_dir}/{entry.name}" if rel_dir else entry.name)
        pending.extend(reversed(subdirs))


_NAME: Final = attrgetter("name")


def _links_to_dir(entry: os.DirEntry[str]) -> bool:
    try:
        return entry.is_dir()
    except OSError:  # a link loop, or no permission to look: not a folder that could be walked
        return False


def iter_photos(paths: Sequence[Path], path_filter: PathFilter | None = None) -> Iterator[Path]:
    """The photos to score for ``musiqd score PATH...``, in order: each path that is a file (or a symbolic
    link, even a dangling one) as given, whatever its name (the decoder says when it cannot read one); each
    folder (or link to one) walked with :func:`walk`, symbolic links to files included, with ``path_filter``
    (default :data:`DEFAULT_FILTER`). Folders that cannot be read are skipped silently. A path that does
    not exist raises :class:`~musiq_daemon.errors.UsageError` when the walk reaches it."""
    wanted = DEFAULT_FILTER if path_filter is None else path_filter
    for path in paths:
        if path.is_dir():
            for found in walk(path, wanted, follow_links=True):
                yield Path(found.entry.path)
        elif path.exists() or path.is_symlink():
            yield path
        else:
            raise UsageError(f"{path} does not exist")
