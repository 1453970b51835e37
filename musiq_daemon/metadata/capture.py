"""When a photo was taken, for ``musiqd query --since/--until/--sort date``."""

from __future__ import annotations

import warnings
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

from PIL import Image, UnidentifiedImageError

# Pillow warns about EXIF entries it skips ("Tag data larger than file. Skipping tag 270"): a UserWarning
# printed raw on stderr, naming no photo. The date is read from what is left, so the warning tells the user
# nothing; a filter, not catch_warnings(), because that is not thread-safe (the daemon reads in threads).
warnings.filterwarnings("ignore", category=UserWarning, module=r"PIL\.TiffImagePlugin")

EXIF_IFD = 0x8769
DATE_TIME_ORIGINAL = 0x9003
OFFSET_TIME_ORIGINAL = 0x9011


def capture_time(path: Path) -> datetime | None:
    """EXIF DateTimeOriginal (with OffsetTimeOriginal when present, else the local zone), or None.

    Only the header is parsed (no pixels). Formats Pillow cannot open (camera RAW) give None: callers
    fall back to the file's modification time.
    """
    try:
        with Image.open(path) as img:
            exif = img.getexif().get_ifd(EXIF_IFD)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return None
    text = exif.get(DATE_TIME_ORIGINAL)
    if not isinstance(text, str):
        return None
    try:
        taken = datetime.strptime(text.strip("\0 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    offset = exif.get(OFFSET_TIME_ORIGINAL)
    if isinstance(offset, str) and len(offset) >= 6 and offset[0] in "+-":
        try:
            sign = 1 if offset[0] == "+" else -1
            delta = timedelta(hours=int(offset[1:3]), minutes=int(offset[4:6]))
            return taken.replace(tzinfo=timezone(sign * delta)).astimezone(UTC)
        except ValueError:
            pass
    return taken.astimezone(UTC)  # naive camera time: read as the local zone
