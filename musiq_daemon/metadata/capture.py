"""When and with which camera a photo was taken: ``musiqd query --since/--until/--sort date`` and the
bursts of ``musiqd cull``.

EXIF ``Make``, ``Model``, ``DateTimeOriginal`` with ``SubSecTimeOriginal`` and ``OffsetTimeOriginal``. Only
the header is parsed (no pixels): by Pillow where it can open the file (JPEG, TIFF, PNG, WebP, HEIC, and
the TIFF-based RAWs: DNG, NEF, CR2, ARW), else by the metadata library, which also reads the RAW formats
Pillow cannot open (CR3, RAF, ORF, ...). A time without an offset is read in the local zone, as
cameras record it.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Pillow warns about EXIF entries it skips ("Tag data larger than file. Skipping tag 270"): a UserWarning
# printed raw on stderr, naming no photo. The date is read from what is left, so the warning tells the user
# nothing; a filter, not catch_warnings(), because that is not thread-safe (the daemon reads in threads).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

EXIF_IFD = 0x8769
MAKE, MODEL = 0x010F, 0x0110
DATE_TIME_ORIGINAL, SUBSEC_TIME_ORIGINAL, OFFSET_TIME_ORIGINAL = 0x9003, 0x9291, 0x9011
# The same entries as the metadata library names them.
_EXIV2_KEYS = (
    "Exif.Image.Make",
    "Exif.Image.Model",
    "Exif.Photo.DateTimeOriginal",
    "Exif.Photo.SubSecTimeOriginal",
    "Exif.Photo.OffsetTimeOriginal",
)


@dataclass(frozen=True)
class Capture:
    """The camera (EXIF make and model as one name) and the capture time (UTC, with its sub-seconds),
    each None when the photo does not say."""

    camera: str | None
    taken: datetime | None


def read_capture(path: Path) -> Capture:
    """The camera and capture time of the photo at ``path`` (see the module docstring); never raises for a
    file that cannot be read (both None)."""
    fields = _pillow_fields(path)
    if fields is None:
        fields = _library_fields(path)
    if fields is None:
        return Capture(None, None)
    make, model, when, fraction, offset = (str(f or "").strip("\0 ") for f in fields)
    # "Canon" + "Canon EOS R5" is one camera name, "NIKON CORPORATION" + "NIKON Z 6" too.
    brand = make.split()[0].lower() if make else ""
    camera = model if brand and model.lower().startswith(brand) else f"{make} {model}".strip()
    return Capture(camera or None, _parse_time(when, fraction, offset))


def capture_time(path: Path) -> datetime | None:
    """The capture time to whole seconds (``photos.taken_at``), or None; callers fall back to the file's
    modification time."""
    taken = read_capture(path).taken
    return taken.replace(microsecond=0) if taken is not None else None


def _pillow_fields(path: Path) -> tuple[object, ...] | None:
    try:
        with Image.open(path) as img:
            exif = img.getexif()
            sub = exif.get_ifd(EXIF_IFD)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    return (
        exif.get(MAKE),
        exif.get(MODEL),
        sub.get(DATE_TIME_ORIGINAL),
        sub.get(SUBSEC_TIME_ORIGINAL),
        sub.get(OFFSET_TIME_ORIGINAL),
    )


def _library_fields(path: Path) -> tuple[object, ...] | None:
    """The same entries read by the metadata library (camera RAW formats Pillow cannot open)."""
    import exiv2

    from musiq_daemon import native_log

    with native_log.exiv2_messages(), contextlib.suppress(exiv2.Exiv2Error, OSError, ValueError):
        image = exiv2.ImageFactory.open(str(path))
        image.readMetadata()
        exif = image.exifData()
        return tuple(str(exif[key].toString()) if key in exif else None for key in _EXIV2_KEYS)
    return None


def _parse_time(when: str, fraction: str, offset: str) -> datetime | None:
    try:
        taken = datetime.strptime(when[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    if fraction.isdigit():
        taken += timedelta(seconds=float(f"0.{fraction}"))
    if len(offset) >= 6 and offset[0] in "+-" and offset[1:3].isdigit() and offset[4:6].isdigit():
        sign = -1 if offset[0] == "-" else 1
        zone = timezone(sign * timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6])))
        return taken.replace(tzinfo=zone).astimezone(UTC)
    return taken.astimezone(UTC)  # naive camera time: read as the local zone
