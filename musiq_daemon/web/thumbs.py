"""Thumbnails for the gallery: made once from a small decode (a camera RAW's embedded preview, a JPEG's
DCT-scaled decode), cached on disk by photo and file version. The originals are never sent."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

from PIL import Image

from musiq_daemon.decode import decode_image

#: The longer side of a thumbnail, in pixels.
THUMB_SIDE = 400


def thumbnail(path: Path, photo_id: int, version: int, cache: Path) -> Path:
    """The cached JPEG thumbnail of ``path`` (made now if missing). Raises MusiqError for a bad photo."""
    target = cache / f"{photo_id}-{version}-{THUMB_SIDE}.jpg"
    if target.is_file():
        return target
    decoded = decode_image(path, min_long_side=THUMB_SIDE)
    image = Image.fromarray(decoded.pixels)
    image.thumbnail((THUMB_SIDE, THUMB_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=82, optimize=True)
    cache.mkdir(parents=True, exist_ok=True)
    fd, temp = tempfile.mkstemp(dir=cache, prefix=".thumb-")
    with os.fdopen(fd, "wb") as out:
        out.write(buffer.getvalue())
    Path(temp).replace(target)  # a concurrent request for the same thumbnail finds a whole file
    return target
