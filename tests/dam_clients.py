"""Real photo managers as readers of what musiqd writes: darktable and GNOME tracker, driven headlessly.

exiftool says what a file holds; these say what a photo manager makes of it, with its own precedence
rules. Both run as any user (root included) with no display, no network and a throw-away HOME, so a
test never touches the developer's own darktable library or tracker cache.

darktable (Debian package ``darktable``)
    ``darktable-cli PHOTO OUT.jpg --core --library LIB.db --configdir DIR ...`` imports the photo into a
    fresh library, exactly as the lighttable's import does, then exports it (a 64 px JPEG nobody reads;
    darktable-cli has no import-only mode). Stars and tags are then read from the library
    (``images.flags``, ``tagged_images``) and from ``data.db`` in the config folder (tag names). About
    one second per photo. What darktable 4.2 reads at import:

    * embedded metadata: ``xmp:Rating`` (or EXIF ``Rating``), IPTC ``Keywords``, and XMP keywords from
      ``lr:hierarchicalSubject`` when the photo has any, else from ``dc:subject``: a ``dc:subject`` keyword
      missing from ``lr:hierarchicalSubject`` is not shown at all;
    * the sidecar ``IMG_1234.JPG.xmp`` (appended name) when it exists, which then replaces every keyword
      of the photo (embedded XMP and IPTC ones too) by the sidecar's, and a sidecar without
      ``xmp:Rating`` gives darktable's default of 1 star, whatever the photo holds;
    * not ``IMG_1234.xmp`` (Lightroom's name) at import. But the export opens the photo as the darkroom
      does, and the first time a photo is opened there darktable imports an ``IMG_1234.xmp`` as
      Lightroom's: its stars (unless 0) replace darktable's, and every entry of its ``dc:subject`` and
      ``lr:hierarchicalSubject`` is added as a tag (the flat ``musiq-koniq-4`` too), provided that the
      XML is indented as Lightroom and exiv2 write it (darktable misses the keywords of a bag written as
      ``<rdf:Bag><rdf:li>`` on one line). :func:`darktable_read` shows that state, which the user sees
      once the photo has been opened in the darkroom.

tracker (Debian packages ``tracker`` and ``tracker-extract``, and ``dbus-daemon`` for dbus-run-session)
    ``tracker3 extract -o json-ld PHOTO`` runs the extractor of GNOME's file indexer (what GNOME's desktop
    search, Files and Photos see) on one file, inside ``dbus-run-session`` (the
    extractor will not start without a session bus). A few tens of milliseconds. What tracker 3.4 reads
    from a JPEG: ``xmp:Rating`` (not EXIF ``Rating``) as ``nao:numericRating``, ``dc:subject`` and IPTC
    ``Keywords`` as tags (never ``lr:hierarchicalSubject``), and the sidecar ``IMG_1234.xmp`` only when the
    JPEG has no embedded XMP at all (never ``IMG_1234.JPG.xmp``). From a DNG it reads neither rating nor
    keywords, embedded or in a sidecar.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import sqlite3
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# darktable's image flags (src/common/image.h): the stars in the low 3 bits (6 was the rejected mark
# before darktable 3.0), rejection in its own bit since then.
_DT_STARS_MASK = 0x7
_DT_LEGACY_REJECT = 6
_DT_IMAGE_REJECTED = 0x8
# The tags darktable attaches on its own (darktable|format|jpg, darktable|changed, ...).
_DT_OWN_TAGS = "darktable|"
_TIMEOUT_S = 120


def _isolated_env(home: Path) -> dict[str, str]:
    """The environment for a photo manager: a throw-away HOME and XDG folders, no display, C locale."""
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    for sub in (".config", ".cache", ".local/share"):
        (home / sub).mkdir(parents=True, exist_ok=True)
    env.update(
        HOME=str(home),
        XDG_CONFIG_HOME=str(home / ".config"),
        XDG_CACHE_HOME=str(home / ".cache"),
        XDG_DATA_HOME=str(home / ".local/share"),
        LC_ALL="C.UTF-8",
        GSETTINGS_BACKEND="memory",  # tracker reads its settings through GSettings: no dconf writes
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return env


def _folder(path: Path) -> list[tuple[str, int, int]]:
    """The names, sizes and modification times of the files beside ``path``."""
    files = [p for p in path.parent.iterdir() if p.is_file()]
    return sorted((p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files)


# --- darktable ----------------------------------------------------------------------------------------------


def darktable_missing() -> str | None:
    """Why darktable cannot be used here, or None."""
    if shutil.which("darktable-cli") is None:
        return "darktable-cli not found: install the Debian package darktable (apt-get install darktable)"
    return None


def have_darktable() -> bool:
    return darktable_missing() is None


@dataclass(frozen=True)
class DarktableView:
    """A photo as darktable shows it after import."""

    stars: int | None  # 0-5; None when rejected
    rejected: bool
    tags: list[str] = field(default_factory=list)  # sorted, hierarchies as darktable stores them: A|B|C

    @property
    def user_tags(self) -> list[str]:
        """The tags without those darktable attaches on its own (``darktable|format|jpg``, ...)."""
        return [t for t in self.tags if not t.startswith(_DT_OWN_TAGS)]


def darktable_read(photo: Path, workdir: Path, *, configdir: Path | None = None) -> DarktableView:
    """Import ``photo`` (with the sidecar beside it, if any) into a new darktable library under ``workdir``
    and return its stars and tags.

    ``configdir`` (darktablerc and data.db, the tag names) may be shared by calls that run one after the
    other, which saves a third of a second each; by default each call gets its own. Raises RuntimeError,
    with darktable's output, when darktable fails or does not import the photo. darktable must leave the
    photo's folder as it found it (it is told not to write sidecars); RuntimeError if it did not.
    """
    photo = Path(os.path.abspath(photo))
    workdir.mkdir(parents=True, exist_ok=True)
    run = Path(tempfile.mkdtemp(prefix="darktable-", dir=workdir))
    library = run / "library.db"
    configdir = configdir if configdir is not None else run / "config"
    configdir.mkdir(parents=True, exist_ok=True)
    command = [
        "darktable-cli",
        str(photo),
        str(run / "export.jpg"),
        "--width",
        "64",
        "--height",
        "64",
        "--hq",
        "false",
        "--core",
        "--library",
        str(library),
        "--configdir",
        str(configdir),
        "--cachedir",
        str(run / "cache"),
        "--disable-opencl",
        # Never write IMG_1234.JPG.xmp beside the photo: the next reader would see darktable's, not musiqd's.
        "--conf",
        "write_sidecar_files=never",
        # darktable's defaults, pinned: stars of a photo without any are 1, and embedded ratings count.
        "--conf",
        "ui_last/import_initial_rating=1",
        "--conf",
        "ui_last/ignore_exif_rating=false",
    ]
    before = _folder(photo)
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        errors="replace",
        env=_isolated_env(run / "home"),
        cwd=run,
        timeout=_TIMEOUT_S,
        check=False,
    )
    output = f"$ {' '.join(command)}\n{done.stdout}{done.stderr}"
    if done.returncode != 0 or not library.is_file():
        raise RuntimeError(f"darktable-cli failed (exit {done.returncode}):\n{output}")
    if _folder(photo) != before:
        raise RuntimeError(f"darktable-cli changed {photo.parent}:\n{output}")
    db = sqlite3.connect(f"file:{library}?mode=ro", uri=True)
    try:
        db.execute("ATTACH DATABASE ? AS data", (f"file:{configdir / 'data.db'}?mode=ro",))
        rows = db.execute(
            "SELECT id, flags FROM main.images WHERE filename = ? ORDER BY version", (photo.name,)
        ).fetchall()
        if not rows:
            raise RuntimeError(f"darktable did not import {photo}:\n{output}")
        image_id, flags = rows[0]
        tags = sorted(
            name
            for (name,) in db.execute(
                "SELECT t.name FROM main.tagged_images AS ti JOIN data.tags AS t ON t.id = ti.tagid"
                " WHERE ti.imgid = ?",
                (image_id,),
            )
        )
    finally:
        db.close()
    rejected = bool(flags & _DT_IMAGE_REJECTED) or (flags & _DT_STARS_MASK) == _DT_LEGACY_REJECT
    return DarktableView(stars=None if rejected else flags & _DT_STARS_MASK, rejected=rejected, tags=tags)


# --- tracker ------------------------------------------------------------------------------------------------


@functools.cache
def tracker_missing() -> str | None:
    """Why ``tracker3 extract`` cannot be used here, or None."""
    if shutil.which("tracker3") is None:
        return "tracker3 not found: install the Debian packages tracker and tracker-extract"
    if shutil.which("dbus-run-session") is None:
        return "dbus-run-session not found (tracker's extractor needs a session bus): install dbus-daemon"
    listing = subprocess.run(
        ["tracker3", "--help"], capture_output=True, text=True, errors="replace", timeout=30, check=False
    )
    if "extract" not in listing.stdout.split():
        return "tracker3 has no 'extract' command: install the Debian package tracker-extract"
    return None


def have_tracker() -> bool:
    return tracker_missing() is None


@dataclass(frozen=True)
class TrackerView:
    """A photo as tracker's extractor reports it."""

    rating: int | None  # nao:numericRating, None when absent
    keywords: list[str] = field(default_factory=list)  # nao:hasTag labels, sorted (flat: no hierarchies)


def _nodes(value: Any) -> list[dict[str, Any]]:
    """Every JSON-LD node object inside ``value`` (nested ones included)."""
    found: list[dict[str, Any]] = []
    if isinstance(value, dict):
        found.append(value)
        for item in value.values():
            found += _nodes(item)
    elif isinstance(value, list):
        for item in value:
            found += _nodes(item)
    return found


def tracker_read(photo: Path) -> TrackerView:
    """Run tracker's extractor on ``photo`` (it finds an ``IMG_1234.xmp`` sidecar itself, see the module
    docstring) and return the rating and keywords it reports. Raises RuntimeError, with the extractor's
    output, when it reports nothing for the photo (it exits 0 even then)."""
    photo = Path(os.path.abspath(photo))
    command = ["dbus-run-session", "--", "tracker3", "extract", "--output-format=json-ld", str(photo)]
    with tempfile.TemporaryDirectory(prefix="tracker-") as home:
        done = subprocess.run(
            command,
            capture_output=True,
            text=True,
            errors="replace",
            env=_isolated_env(Path(home)),
            cwd=home,
            timeout=_TIMEOUT_S,
            check=False,
        )
    output = f"$ {' '.join(command)}\n{done.stdout}{done.stderr}"
    try:
        document = json.loads(done.stdout)
    except json.JSONDecodeError:
        raise RuntimeError(f"tracker3 extract reported nothing (exit {done.returncode}):\n{output}") from None
    nodes = _nodes(document)
    labels = {n["@id"]: n["nao:prefLabel"] for n in nodes if "@id" in n and "nao:prefLabel" in n}
    files = [n for n in nodes if n.get("@id") == photo.as_uri()]
    if not files:
        raise RuntimeError(f"tracker3 extract reported nothing about {photo}:\n{output}")
    ratings = {str(n["nao:numericRating"]) for n in files if "nao:numericRating" in n}
    if len(ratings) > 1:
        raise RuntimeError(f"tracker3 extract reported several ratings {ratings}:\n{output}")
    keywords: set[str] = set()
    for node in files:
        tags = node.get("nao:hasTag", [])
        for tag in tags if isinstance(tags, list) else [tags]:
            tag_id = tag["@id"] if isinstance(tag, dict) else tag
            keywords.add(labels[tag_id])
    rating = int(float(ratings.pop())) if ratings else None
    return TrackerView(rating=rating, keywords=sorted(keywords))
