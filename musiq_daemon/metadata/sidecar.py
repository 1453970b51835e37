"""Sidecar names: which XMP sidecars a photo has or gets, and moving them with a renamed photo.

Two naming conventions exist: ``IMG_1234.CR2.xmp`` (appended: darktable, digiKam) and ``IMG_1234.xmp``
(extension replaced: Lightroom Classic, Capture One, Bridge, Photo Mechanic); see
:mod:`musiq_daemon.metadata.writer` for which one musiqd creates and why. ``IMG_1234.xmp`` can belong to
only one photo, but RAW+JPEG shooting makes ``IMG_1234.CR2`` and ``IMG_1234.JPG``: like Lightroom, which
treats the JPEG as a companion of the RAW, the RAW owns it (a RAW, DNG included, outranks everything else).
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import stat
from pathlib import Path

from musiq_daemon.decode import RAW_SUFFIXES, SUPPORTED_SUFFIXES, display_name
from musiq_daemon.metadata.policy import SidecarNaming as SidecarNaming

log = logging.getLogger(__name__)


def sidecar_targets(photo: Path, naming: SidecarNaming) -> list[tuple[Path, bool]]:
    """The sidecars to write for ``photo``: every existing one it may use (the configured convention's
    first), else the one to create; each as (path, exists)."""
    stem_names = [photo.with_suffix(s) for s in (".xmp", ".XMP")] if _owns_stem_sidecar(photo) else []
    appended_names = [photo.with_name(photo.name + s) for s in (".xmp", ".XMP")]
    preferred, other = (stem_names, appended_names) if naming == "replace" else (appended_names, stem_names)
    existing: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for candidate in (*preferred, *other):
        try:
            info = candidate.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) not in seen:  # .xmp and .XMP are one file on case-insensitive shares
            seen.add((info.st_dev, info.st_ino))
            existing.append(candidate)
    if existing:
        return [(p, True) for p in existing]
    return [((stem_names or appended_names)[0] if naming == "replace" else appended_names[0], False)]


def move_sidecars(old: Path, new: Path) -> list[tuple[Path, Path]]:
    """Rename the sidecars of a photo that moved from ``old`` to ``new`` (the daemon saw the same content
    appear under a new name) so that photo managers still find them: ``old.ext.xmp`` becomes
    ``new.ext.xmp``, and ``old.xmp`` (when ``old`` owned that name) becomes ``new.xmp`` when ``new`` owns
    it, else ``new.ext.xmp``. Nothing happens while ``old`` still exists (a copy, not a move), and a sidecar
    is never moved onto an existing file (a photo manager may have moved it already). Returns the
    (from, to) pairs moved; a sidecar that cannot be moved is logged and left where it is."""
    if os.path.lexists(old):
        return []
    candidates = [(old.with_name(old.name + s), new.with_name(new.name + s)) for s in (".xmp", ".XMP")]
    if _owns_stem_sidecar(old):
        owns = _owns_stem_sidecar(new)
        candidates += [
            (old.with_suffix(s), new.with_suffix(s) if owns else new.with_name(new.name + s))
            for s in (".xmp", ".XMP")
        ]
    moved: list[tuple[Path, Path]] = []
    seen: set[tuple[int, int]] = set()
    for source, target in candidates:
        try:
            info = source.lstat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) in seen or not stat.S_ISREG(info.st_mode):
            continue
        seen.add((info.st_dev, info.st_ino))
        if os.path.lexists(target):
            log.info("sidecar %s not moved with its photo: %s exists", display_name(str(source)), target.name)
            continue
        try:
            try:
                source.rename(target)  # (a sidecar is not a photo: no atomic-replace dance needed)
            except OSError as exc:
                if exc.errno != errno.EXDEV:
                    raise
                shutil.copy2(source, target)
                source.unlink()
        except OSError as exc:
            log.warning(
                "sidecar %s not moved with its photo: %s", display_name(str(source)), exc.strerror or exc
            )
            continue
        moved.append((source, target))
    return moved


def _owns_stem_sidecar(photo: Path) -> bool:
    """Whether ``photo`` may use the extension-replaced sidecar name: no other photo with the same stem
    ranks as high (a RAW outranks a JPEG/HEIC/...; see the module docstring)."""
    rank = _rank(photo.suffix)
    try:
        own = photo.stat()
    except OSError:
        own = None
    for suffix in SUPPORTED_SUFFIXES:
        if _rank(suffix) < rank:
            continue
        for spelled in {suffix, suffix.upper()}:
            sibling = photo.with_suffix(spelled)
            try:
                info = sibling.stat()
            except OSError:
                continue
            if own is None or (info.st_dev, info.st_ino) != (own.st_dev, own.st_ino):
                return False
    return True


def _rank(suffix: str) -> int:
    return 1 if suffix.lower() in RAW_SUFFIXES else 0


__all__ = ["SidecarNaming", "move_sidecars", "sidecar_targets"]
