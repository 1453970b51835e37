"""Decode photos to RGB uint8 pixels for scoring.

One entry point per kind of input: :func:`decode_image` (a file or its bytes), :func:`from_array` and
:func:`from_pil` (pixels already in memory). Each returns a :class:`DecodedImage` that records how the
pixels were obtained, because that changes the score and must be traceable.

Decisions that change scores (each recorded in the result):

* JPEG is decoded like the official MUSIQ pipeline (``tf.image.decode_jpeg`` with default settings:
  libjpeg's fast integer IDCT and fancy upsampling), bit for bit, including CMYK JPEGs. When the caller only
  needs a smaller image (``min_long_side``), libjpeg's DCT scaling decodes at 1/2, 1/4 or 1/8 size (source
  ``dct-1/2`` ...), which saves IDCT work and memory. Only power-of-two factors are used: the 3/8, 5/8,
  3/4 and 7/8 scalings measured no faster than the next power of two. The rare chroma samplings the fast
  decoder refuses (e.g. 4:2:0 CMYK) go through Pillow's libjpeg instead (``pillow-full``...), about one
  level off the official pixels.
* Other formats go through Pillow (HEIF through its HEIF plugin). When ``min_long_side`` allows a factor
  of 2 or more, the image is box-averaged by that integer factor (``reduce-1/3``...): a proper low-pass
  like the JPEG DCT scaling, and it spares the caller a full-size float copy.
* EXIF orientation is applied by default: photographers judge the upright image, and the photos MUSIQ was
  trained on (KonIQ-10k, SPAQ) were upright. The official code ignores it; pass
  ``apply_orientation=False`` to reproduce that. HEIF is the exception: its decoder always applies the
  container's rotation/mirror (irot/imir), which is what HEIF viewers show and what the HEIF standard
  makes authoritative; ``orientation`` then reports the EXIF copy of it.
* Alpha is dropped and the stored colour kept, also under fully transparent pixels, as
  ``tf.image.decode_png(channels=3)`` does. Compositing onto a background was rejected: no background is
  right for every viewer, and it would change the score of the many photos that carry an all-opaque alpha
  channel.
* 16-bit samples become 8-bit as round(v * 255 / 65535). Exception: Pillow hands over 16-bit *colour*
  PNG/TIFF already reduced to their high byte (v >> 8, the same as libpng's strip-16 used by TensorFlow's
  PNG decoder); the two rules differ by at most one level.
* Camera RAW: the largest embedded preview when its long side reaches ``min_long_side`` (``raw-preview``),
  else LibRaw's half-size demosaic with the camera's white balance (``raw-half-demosaic``: one RGB pixel
  per 2x2 Bayer quad, the colour resolution the sensor really has), or a full demosaic when even half size
  is too small for ``min_long_side`` (``raw-demosaic``). ``min_long_side=None`` means half size for RAW.

Memory: a NAS has 2-4 GB, so pixels are decoded once; a rotation makes one more copy. What a file may
cost is bounded before it is read past its first 4 KB, whatever it says about itself:

* A file larger than its format's limit (``max_file_mb``, :data:`DEFAULT_MAX_FILE_MB`) is refused. JPEG
  data is read whole (and the metadata writer and the content hash read every format whole), so the
  limit bounds those reads; the other decoders stream from the file.
* A sparse file (mostly holes: ranges never written, which read as zeros and take no disk space) is
  refused: every byte of a photo was written, and a valid JPEG followed by 3 GB of holes would otherwise
  be read whole. See :func:`~musiq_daemon.metadata.safefile.sparse_stored_bytes`.
* Data after the end of a JPEG's image is accepted: phones append motion-photo videos and cameras MPF
  previews there, and libjpeg stops at the end of the image. A JPEG followed by garbage is therefore
  decoded; the size limit bounds what that costs.
* ``max_pixels`` is checked from the header, before any pixel is decoded.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import stat
import struct
import threading
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import MappingProxyType
from typing import Final, TypeVar

import numpy as np
import numpy.typing as npt
import rawpy
import simplejpeg
from PIL import Image, UnidentifiedImageError

from musiq_daemon.errors import DecodeError
from musiq_daemon.metadata.safefile import sparse_stored_bytes
from musiq_daemon.native_log import capture_native_stderr

U8 = npt.NDArray[np.uint8]
_Item = TypeVar("_Item", bound=np.generic)

# 200 MP: above the largest single-shot camera sensors (about 150 MP) with room for multi-shot composites
# and stitched panoramas, while its decoded RGB (600 MB) still fits next to the model on a 2-4 GB NAS.
# Beyond it a file is a huge panorama or a decompression bomb (a few KB of PNG can declare billions of
# pixels); both are refused before any pixel is decoded. This limit is the one that speaks: Pillow's own
# guard (PIL.Image.MAX_IMAGE_PIXELS, 89 MP by default, an error above twice that) is raised to it when
# lower (see _pillow_guard), never lowered.
DEFAULT_MAX_PIXELS: Final = 200_000_000

# The largest file read, in MB (1 MB = 1,000,000 bytes), by format (the keys of the max_file_mb setting:
# RAW for every camera RAW, DNG included). A larger file is refused before anything past its first 4 KB
# is read. Memory is why: a JPEG is read whole to be decoded, and writing a score reads a photo whole
# and holds about three copies of it, on a NAS with 2-4 GB. Each limit sits above the largest real photo
# of its kind at max_pixels (200 MP):
# * jpeg 256: 200 MP at quality 100 is about 150 MB; phones append motion-photo videos after the image,
#   cameras MPF previews.
# * png 512: lossless, so photos compress little; 200 MP of 8-bit RGB is 600 MB raw, about 400 MB as PNG.
# * tiff 1024: often uncompressed; 200 MP of 8-bit RGB is 600 MB, and 16-bit RGB fits up to 170 MP.
# * bmp 1024: uncompressed; 200 MP at 32 bits a pixel is 800 MB.
# * webp, heif, avif, gif 256: compressed like JPEG or better (WebP cannot exceed 16383 x 16383).
# * raw 512: the largest camera RAWs (150 MP medium format, 16-bit) are about 300 MB.
DEFAULT_MAX_FILE_MB: Final[Mapping[str, int]] = MappingProxyType(
    {"jpeg": 256, "png": 512, "tiff": 1024, "webp": 256, "heif": 256, "avif": 256, "bmp": 1024, "gif": 256,
     "raw": 512}
)  # fmt: skip
_MB: Final = 1_000_000

RAW_SUFFIXES: Final = frozenset(
    {
        ".cr2", ".cr3", ".nef", ".nrw", ".arw", ".srf", ".sr2", ".raf", ".orf", ".rw2", ".pef", ".srw",
        ".dng", ".x3f", ".3fr", ".iiq", ".erf", ".kdc", ".mos", ".mrw", ".rwl",
    }
)  # fmt: skip
SUPPORTED_SUFFIXES: Final = (
    frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".webp", ".bmp", ".gif", ".heic", ".heif", ".avif"})
    | RAW_SUFFIXES
)

_SUPPORTED_TEXT = "JPEG, PNG, TIFF, WebP, BMP, GIF, HEIC/HEIF, AVIF and camera RAW"
_HEAD_BYTES = 4096  # enough for every signature sniffed below, including an ISO-BMFF brand list
_ORIENTATION_TAG = 0x0112


@dataclass(frozen=True)
class DecodedImage:
    """Pixels ready for preprocessing, and how they were obtained.

    ``pixels`` is (H, W, 3) RGB uint8, C-contiguous and read-only (the result is shared, e.g. between a
    decoding thread and the scorer; copy it to modify it).
    """

    pixels: U8
    format: str  # "JPEG", "PNG", "TIFF", "WEBP", "BMP", "GIF", "HEIF", "AVIF", "RAW:CR2", "ARRAY", "PIL"
    source: str  # "full", "dct-1/4", "reduce-1/2", "raw-preview", "raw-half-demosaic", "array", "pil"...
    stored_size: tuple[int, int]  # (width, height) of the full-resolution image as stored, before orientation
    orientation: int  # EXIF orientation found (1 when none)
    orientation_applied: bool


# --- entry points ------------------------------------------------------------------------------------------


def decode_image(
    source: Path | str | bytes,
    *,
    min_long_side: int | None = None,
    apply_orientation: bool = True,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    name: str | None = None,
    max_file_mb: Mapping[str, int] | None = None,
) -> DecodedImage:
    """Decode a photo file (or its bytes) to RGB uint8.

    ``min_long_side``: the caller will shrink the image so that its long side becomes this; the decoder may
    then return a smaller image whose long side is still at least ``min_long_side`` (or the whole image
    when that is smaller). ``None`` returns full resolution (half size for camera RAW, see the module doc).
    ``max_pixels``: refuse larger images before decoding their pixels. ``max_file_mb``: the largest file
    by format (see :data:`DEFAULT_MAX_FILE_MB`, which fills in formats it leaves out); sparse files are
    refused too. ``name`` labels ``bytes`` input in error messages. Every failure is a one-line
    :class:`DecodeError` naming the file.
    """
    if min_long_side is not None and min_long_side < 1:
        raise ValueError(f"min_long_side must be positive, got {min_long_side}")
    if isinstance(source, str):
        source = Path(source)
    label = display_name(
        name if name is not None else str(source) if isinstance(source, Path) else "<image data>"
    )
    head = read_head(source, label, max_file_mb=max_file_mb)
    suffix = source.suffix if isinstance(source, Path) else ""
    fmt = sniff_format(head, suffix)
    if fmt is None:
        raise DecodeError(
            f"{label}: not a supported image format ({_describe(head)}); supported: {_SUPPORTED_TEXT}"
        )
    request = DecodeRequest(label, min_long_side, apply_orientation, max_pixels)
    try:
        if fmt == "JPEG":
            return _decode_jpeg_file(_read_all(source, label, fmt, max_file_mb), request)
        if fmt.startswith("RAW:"):
            return _decode_raw(source, fmt, request)
        return _decode_with_pillow(source, fmt, request)
    except MemoryError:
        raise DecodeError(
            f"{label}: not enough memory to decode this image; lower max_pixels or the resolution limit"
        ) from None


def from_array(array: npt.NDArray[np.generic]) -> DecodedImage:
    """Wrap pixels already in memory: (H, W), (H, W, 1), (H, W, 3) or (H, W, 4 - alpha dropped); uint8,
    uint16 (rounded to 8 bits) or float in [0, 1]. The data is copied, so later changes to ``array`` do not
    affect the result."""
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[2] in (1, 3, 4):
        arr = arr[..., :3] if arr.shape[2] == 4 else arr
    elif arr.ndim != 2:
        raise DecodeError(f"<array>: expected an (H, W) or (H, W, 1|3|4) image array, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise DecodeError(f"<array>: the image array is empty (shape {arr.shape})")
    if arr.dtype == np.uint8:
        u8 = arr
    elif arr.dtype == np.uint16:
        u8 = _u16_to_u8(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        u8 = _float_to_u8(arr, "<array>")
    else:
        raise DecodeError(f"<array>: unsupported dtype {arr.dtype}; use uint8, uint16 or float in [0, 1]")
    pixels = _finish(u8, 1, copy=u8 is arr)  # never share memory with the caller's array
    return DecodedImage(pixels, "ARRAY", "array", (pixels.shape[1], pixels.shape[0]), 1, False)


def from_pil(image: Image.Image, *, apply_orientation: bool = True) -> DecodedImage:
    """Convert a Pillow image (any mode; see the module doc for 16-bit and alpha) and apply its EXIF
    orientation. The pixels are taken as Pillow decoded them: a JPEG opened with Pillow is not decoded
    the way the official pipeline decodes it (use :func:`decode_image` on the file for that)."""
    try:
        image.load()
        orientation, container_applied = _pil_orientation(image)
        converted = _pil_to_rgb_or_l(image, "<PIL image>")
    except DecodeError:
        raise
    except Exception as exc:  # Pillow's plugins raise assorted types on bad data; this is the boundary
        raise DecodeError(f"<PIL image>: cannot read the image data: {one_line(exc)}") from None
    pixels = _finish(np.asarray(converted), orientation if apply_orientation and not container_applied else 1)
    stored = _stored_size(converted.size, orientation if container_applied else 1)
    applied = (container_applied or apply_orientation) and orientation != 1
    return DecodedImage(pixels, "PIL", "pil", stored, orientation, applied)


def sniff_format(head: bytes, suffix: str) -> str | None:
    """The format of a file from its first bytes (at least 64; 4 KB recommended) and, for camera RAW files
    that are plain TIFF inside, its suffix. Returns a :attr:`DecodedImage.format` value or None."""
    suffix = suffix.lower()
    raw_name = "RAW:" + suffix[1:].upper() if suffix in RAW_SUFFIXES else None
    if head.startswith(b"\xff\xd8\xff"):
        return "JPEG"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return "PNG"
    if head.startswith((b"GIF87a", b"GIF89a")):
        return "GIF"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "WEBP"
    if head[:2] == b"BM" and len(head) >= 18 and _u32le(head, 14) in (12, 16, 40, 52, 56, 64, 108, 124):
        return "BMP"
    if head.startswith((b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")):
        if head[8:10] == b"CR":
            return "RAW:CR2"
        return raw_name or "TIFF"
    for magic, name in _RAW_MAGIC:
        if head.startswith(magic):
            return raw_name or name
    if head[4:8] == b"ftyp":
        brands = _bmff_brands(head)
        if b"crx " in brands:
            return "RAW:CR3"
        major = head[8:12]
        if major in (b"avif", b"avis"):
            return "AVIF"
        if major in _HEIF_BRANDS:
            return "HEIF"
        if brands & {b"avif", b"avis"}:
            return "AVIF"
        if brands & (_HEIF_BRANDS | _GENERIC_HEIF_BRANDS):
            return "HEIF"
        return None
    # Remaining RAW formats have no signature we can rely on; LibRaw decides (and says when it cannot).
    return raw_name


# --- requests, errors and small helpers -------------------------------------------------------------------


@dataclass(frozen=True)
class DecodeRequest:
    """What a decoder is asked for: shared with the content hash, which opens RAW files the same way."""

    label: str  # the file as shown in messages
    min_long_side: int | None
    apply_orientation: bool
    max_pixels: int


_RAW_MAGIC: Final = (
    (b"IIRO", "RAW:ORF"),
    (b"IIRS", "RAW:ORF"),
    (b"MMOR", "RAW:ORF"),
    (b"IIU\0", "RAW:RW2"),
    (b"FUJIFILMCCD-RAW", "RAW:RAF"),
    (b"FOVb", "RAW:X3F"),
    (b"\0MRM", "RAW:MRW"),
)
_HEIF_BRANDS: Final = frozenset({b"heic", b"heix", b"hevc", b"hevx", b"heim", b"heis"})
_GENERIC_HEIF_BRANDS: Final = frozenset({b"mif1", b"msf1"})  # any codec: the other brands decide


def _u32le(data: bytes, at: int) -> int:
    value: int = struct.unpack_from("<I", data, at)[0]
    return value


def _bmff_brands(head: bytes) -> set[bytes]:
    size = min(int.from_bytes(head[:4], "big"), len(head))
    return {head[8:12]} | {head[i : i + 4] for i in range(16, size - 3, 4)}


def _describe(head: bytes) -> str:
    """What an unsupported file looks like, so the user knows what they have."""
    known = (
        (b"%PDF", "a PDF document"),
        (b"PK\x03\x04", "a ZIP archive (or an office document)"),
        (b"8BPS", "a Photoshop PSD file"),
        (b"\xff\x0a", "a JPEG XL image"),
        (b"\0\0\0\x0cJXL ", "a JPEG XL image"),
        (b"\0\0\0\x0cjP  ", "a JPEG 2000 image"),
        (b"<?xml", "an XML or SVG file"),
        (b"<svg", "an SVG drawing"),
    )
    for magic, what in known:
        if head.startswith(magic):
            return f"it looks like {what}"
    if head[4:8] == b"ftyp":
        return f"it looks like a video or other ISO media file of brand {head[8:12].decode('latin-1')!r}"
    try:
        text = head[:512].decode("utf-8")
    except UnicodeDecodeError:
        text = ""
    if text and all(ch.isprintable() or ch in "\r\n\t" for ch in text):
        return "it looks like text"
    return f"unrecognised content starting with {head[:8].hex(' ')}"


def display_name(name: str) -> str:
    """A file name safe for a one-line message (names may contain newlines or undecodable bytes)."""
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name)


def one_line(exc: BaseException | str) -> str:
    """An exception's message (or a text) as one printable line, for an error message."""
    if isinstance(exc, BaseException):
        arg = exc.args[0] if len(exc.args) == 1 else None
        text = arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(exc) or type(exc).__name__
    else:
        text = exc
    return display_name(" ".join(text.split()))


def read_error(exc: OSError, label: str) -> DecodeError:
    """The one-line :class:`DecodeError` for a photo ``label`` that could not be read."""
    if isinstance(exc, FileNotFoundError):
        return DecodeError(f"{label}: file not found")
    if isinstance(exc, IsADirectoryError):
        return DecodeError(f"{label}: is a directory, not an image file")
    if isinstance(exc, PermissionError):
        return DecodeError(f"{label}: permission denied; make the file readable by the user running musiqd")
    return DecodeError(f"{label}: cannot read the file: {one_line(exc.strerror or str(exc))}")


def read_head(source: Path | bytes, label: str, *, max_file_mb: Mapping[str, int] | None = None) -> bytes:
    """The first bytes of a photo, enough for :func:`sniff_format`. Directories, FIFOs, devices and empty
    files are refused with a one-line :class:`DecodeError`, without reading them; sparse files and files
    larger than their format's limit (see :func:`check_file`) after reading only these bytes."""
    if isinstance(source, bytes):
        if not source:
            raise DecodeError(f"{label}: no image data (0 bytes)")
        head = source[:_HEAD_BYTES]
        fmt = sniff_format(head, "")
        if fmt is not None:
            check_file_size(len(source), fmt, label, max_file_mb)
        return head
    try:
        info = source.stat()
        if stat.S_ISDIR(info.st_mode):
            raise DecodeError(f"{label}: is a directory, not an image file")
        if not stat.S_ISREG(info.st_mode):  # reading a FIFO or a device would block or never end
            raise DecodeError(f"{label}: not a regular file")
        if info.st_size == 0:
            raise DecodeError(f"{label}: file is empty (0 bytes); it may still be being copied")
        with source.open("rb") as f:
            head = f.read(_HEAD_BYTES)
            check_file(f.fileno(), os.fstat(f.fileno()), head, source.suffix, label, max_file_mb)
            return head
    except OSError as exc:
        raise read_error(exc, label) from None


def check_file(
    fd: int,
    info: os.stat_result,
    head: bytes,
    suffix: str,
    label: str,
    max_file_mb: Mapping[str, int] | None = None,
) -> int | None:
    """Refuse a photo file before it is read past ``head`` (its first bytes; ``fd`` the open file, ``info``
    its stat, ``suffix`` its name's): one that is sparse, or larger than its format's limit, raises a
    one-line :class:`DecodeError`. Returns that limit in bytes (None when ``head`` is no format musiqd
    reads: the caller refuses it in its own words)."""
    stored = sparse_stored_bytes(fd, info)
    if stored is not None:
        on_disk, length = file_size_text(stored), file_size_text(info.st_size)
        raise DecodeError(
            f"{label}: file is sparse ({on_disk} on disk, {length} long): "
            "not a photo (every byte of a photo is written); if it is one, copy it without holes "
            "(cp --sparse=never)"
        )
    fmt = sniff_format(head, suffix)
    if fmt is None:
        return None
    check_file_size(info.st_size, fmt, label, max_file_mb)
    return max_file_bytes(fmt, max_file_mb)


def file_size_text(size: int) -> str:
    """A file size for a message: ``112 KB``, ``12.5 MB``, ``3.2 GB`` (powers of 1000, like the setting)."""
    if size < _MB:
        return f"{-(-size // 1000)} KB"
    if size < 1000 * _MB:
        return f"{size / _MB:.1f} MB"
    return f"{size / (1000 * _MB):.1f} GB"


def file_limit_key(fmt: str) -> str:
    """The ``max_file_mb`` key of a :attr:`DecodedImage.format` (``RAW:CR2`` -> ``raw``)."""
    return "raw" if fmt.startswith("RAW:") else fmt.lower()


def max_file_bytes(fmt: str, max_file_mb: Mapping[str, int] | None = None) -> int:
    """The largest file of format ``fmt`` musiqd reads, in bytes (``max_file_mb`` by format key, the
    defaults for the formats it leaves out)."""
    key = file_limit_key(fmt)
    limits = DEFAULT_MAX_FILE_MB if max_file_mb is None else max_file_mb
    return limits.get(key, DEFAULT_MAX_FILE_MB.get(key, max(DEFAULT_MAX_FILE_MB.values()))) * _MB


def check_file_size(size: int, fmt: str, label: str, max_file_mb: Mapping[str, int] | None = None) -> None:
    """Raise a one-line :class:`DecodeError` when ``size`` bytes is more than format ``fmt`` may have."""
    limit = max_file_bytes(fmt, max_file_mb)
    if size > limit:
        key = file_limit_key(fmt)
        raise DecodeError(
            f"{label}: file is {file_size_text(size)}, more than max_file_mb.{key}={limit // _MB} allows; "
            f"raise the max_file_mb setting for {key} to read it"
        )


def _read_all(source: Path | bytes, label: str, fmt: str, max_file_mb: Mapping[str, int] | None) -> bytes:
    """The whole file, read only as far as the limit for ``fmt`` (also when it grew since it was
    checked)."""
    if isinstance(source, bytes):
        return source
    limit = max_file_bytes(fmt, max_file_mb)
    try:
        with source.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(min(size, limit) + 1)  # one byte more tells a file longer than it was
            if size < len(data) <= limit:  # it grew meanwhile: read on, still within the limit
                data += f.read(limit + 1 - len(data))
    except OSError as exc:
        raise read_error(exc, label) from None
    if len(data) > limit:
        raise DecodeError(
            f"{label}: file grew while it was read, past the max_file_mb.{file_limit_key(fmt)}="
            f"{limit // _MB} limit; it may still be being written"
        )
    return data


def _check_pixels(width: int, height: int, request: DecodeRequest) -> None:
    if width * height > request.max_pixels:
        raise DecodeError(
            f"{request.label}: image is {width}x{height} ({width * height / 1e6:.1f} megapixels), more than "
            f"max_pixels={request.max_pixels:_} allows; raise the max_pixels setting to decode it"
        )


def _stored_size(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    """(width, height) before ``orientation`` was applied to an image now of ``size``."""
    return (size[1], size[0]) if orientation >= 5 else size


# --- orientation -------------------------------------------------------------------------------------------


def _orient(pixels: npt.NDArray[_Item], orientation: int) -> npt.NDArray[_Item]:
    """Turn stored pixels (rows x columns x ...) upright for EXIF ``orientation``; a view."""
    if orientation == 2:  # mirrored left-right
        return pixels[:, ::-1]
    if orientation == 3:  # rotated 180
        return pixels[::-1, ::-1]
    if orientation == 4:  # mirrored top-bottom
        return pixels[::-1, :]
    if orientation == 5:  # mirrored along the main diagonal
        return pixels.swapaxes(0, 1)
    if orientation == 6:  # stored rotated 90 counter-clockwise: turn 90 clockwise
        return pixels.swapaxes(0, 1)[:, ::-1]
    if orientation == 7:  # mirrored along the anti-diagonal
        return pixels[::-1, ::-1].swapaxes(0, 1)
    if orientation == 8:  # stored rotated 90 clockwise: turn 90 counter-clockwise
        return pixels.swapaxes(0, 1)[::-1, :]
    return pixels


def _valid_orientation(value: object) -> int:
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _tiff_orientation(tiff: bytes) -> int:
    """The Orientation tag of a TIFF/EXIF block's IFD0 (1 when absent or malformed)."""
    if len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return 1
    order = "<" if tiff[:2] == b"II" else ">"
    (ifd,) = struct.unpack_from(order + "I", tiff, 4)
    if ifd + 2 > len(tiff):
        return 1
    (count,) = struct.unpack_from(order + "H", tiff, ifd)
    for i in range(count):
        at = ifd + 2 + 12 * i
        if at + 12 > len(tiff):
            return 1
        tag, kind = struct.unpack_from(order + "HH", tiff, at)
        if tag == _ORIENTATION_TAG and kind == 3:  # SHORT
            return _valid_orientation(struct.unpack_from(order + "H", tiff, at + 8)[0])
    return 1


def _finish(pixels: U8, orientation: int, *, copy: bool = False) -> U8:
    """Upright, 3-channel, C-contiguous, read-only pixels. Makes at most one copy (none when the input
    already is all that and ``copy`` is false)."""
    if pixels.ndim == 3 and pixels.shape[2] == 1:
        pixels = pixels[..., 0]
    if pixels.ndim == 2:
        out: U8 = np.repeat(_orient(pixels, orientation)[..., None], 3, axis=2)
    elif orientation != 1:
        # Move each 3-byte pixel as one item: twice as fast as moving three separate bytes (0.16 s instead
        # of 0.31 s to turn 24 MP by 90 degrees).
        packed = np.ascontiguousarray(pixels).view("V3")[..., 0]
        turned = np.ascontiguousarray(_orient(packed, orientation))
        out = turned.view(np.uint8).reshape(turned.shape[0], turned.shape[1], 3)
    elif copy:
        out = np.array(pixels, order="C", copy=True)
    else:
        out = np.ascontiguousarray(pixels)
    out.flags.writeable = False
    return out


def _u16_to_u8(values: npt.NDArray[np.generic]) -> U8:
    """round(v * 255 / 65535) exactly, in integers (no float rounding ties)."""
    wide = values.astype(np.uint32)
    wide *= 255
    wide += 32767
    wide //= 65535
    return wide.astype(np.uint8)


def _float_to_u8(values: npt.NDArray[np.generic], label: str) -> U8:
    as_float = values.astype(np.float32, copy=False)
    if not np.isfinite(as_float).all():
        raise DecodeError(f"{label}: image contains NaN or infinite values")
    low, high = float(as_float.min()), float(as_float.max())
    # A little slack for rounding in the caller's own processing; a 0-255 float image is a mistake that
    # clipping would turn into a white picture, so it is refused.
    if low < -1e-3 or high > 1.0 + 1e-3:
        raise DecodeError(
            f"{label}: float pixel values must lie in [0, 1], found [{low:g}, {high:g}]"
            + ("; divide by 255" if high <= 255.0 and low >= 0.0 else "")
        )
    out: U8 = np.rint(np.clip(as_float, 0.0, 1.0) * 255.0).astype(np.uint8)
    return out


# --- JPEG --------------------------------------------------------------------------------------------------

_STANDALONE_MARKERS: Final = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length


def _jpeg_complete(data: bytes) -> bool:
    """True when the marker structure reaches EOI. Data after EOI (e.g. a motion-photo video) is fine."""
    pos, end = 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)  # stray bytes between segments are skipped, as libjpeg does
        if pos < 0 or pos + 2 > end:
            return False
        marker = data[pos + 1]
        if marker == 0xD9:
            return True
        if marker in (0, 0xFF) or marker in _STANDALONE_MARKERS:
            pos += 1 if marker in (0, 0xFF) else 2
            continue
        if pos + 4 > end:
            return False
        pos += 2 + max(int.from_bytes(data[pos + 2 : pos + 4], "big"), 2)
        if marker != 0xDA:
            continue
        # Entropy-coded data: skip to the next marker (0xFF not followed by a stuffed 0 or an RST).
        while True:
            pos = data.find(b"\xff", pos)
            if pos < 0 or pos + 1 >= end:
                return False
            following = data[pos + 1]
            if following in (0, 0xFF) or 0xD0 <= following <= 0xD7:
                pos += 1
                continue
            break


@dataclass(frozen=True)
class _JpegHeader:
    orientation: int  # from the first APP1 Exif segment, 1 when none
    adobe: bool  # an Adobe APP14 segment: CMYK is stored inverted
    cut_short: bool  # the data ends before the first scan


def _jpeg_header(data: bytes) -> _JpegHeader:
    """Walk the marker segments from SOI to the first SOS (no pixel data is touched)."""
    orientation, adobe, exif_seen = 1, False, False
    pos, end = 2, len(data)
    while True:
        pos = data.find(b"\xff", pos)  # libjpeg skips stray bytes between segments, so do we
        if pos < 0 or pos + 2 > end:
            return _JpegHeader(orientation, adobe, cut_short=True)
        marker = data[pos + 1]
        if marker in (0, 0xFF) or marker in _STANDALONE_MARKERS:
            pos += 1 if marker in (0, 0xFF) else 2
            continue
        if marker == 0xD9:  # EOI before any scan: an empty or broken file, not a cut one
            return _JpegHeader(orientation, adobe, cut_short=False)
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if pos + 4 > end or pos + 2 + length > end:
            return _JpegHeader(orientation, adobe, cut_short=True)
        if marker == 0xDA:
            return _JpegHeader(orientation, adobe, cut_short=False)
        payload = data[pos + 4 : pos + 2 + length]
        if marker == 0xE1 and not exif_seen and payload.startswith(b"Exif\0\0"):
            orientation, exif_seen = _tiff_orientation(payload[6:]), True
        elif marker == 0xEE and payload.startswith(b"Adobe"):
            adobe = True
        pos += 2 + max(length, 2)


def _dct_scale(width: int, height: int, min_long_side: int | None) -> int:
    """The numerator M of the M/8 DCT scale to decode at: the smallest of 1, 2, 4, 8 that keeps the long
    side at least ``min_long_side`` (libjpeg rounds scaled sizes up)."""
    if min_long_side is None:
        return 8
    long_side = max(width, height)
    for numerator in (1, 2, 4):
        if -(-long_side * numerator // 8) >= min_long_side:
            return numerator
    return 8


_TRUNCATED_JPEG: Final = (
    "JPEG data is truncated (it ends before the end of the image); "
    "the file may be incompletely copied or still being written"
)


def _jpeg_pixels(data: bytes, request: DecodeRequest) -> tuple[U8, str, tuple[int, int], int]:
    """Decode JPEG ``data`` like the official pipeline: (pixels as stored, scale label, stored (w, h),
    EXIF orientation)."""
    label = request.label
    header = _jpeg_header(data)
    if header.cut_short:
        raise DecodeError(f"{label}: {_TRUNCATED_JPEG}")
    try:
        height, width, colorspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        # The fast decoder only takes the chroma samplings it knows (it refuses e.g. 4:2:0 CMYK).
        return _jpeg_pixels_pillow(data, request, header)
    _check_pixels(width, height, request)
    numerator = _dct_scale(width, height, request.min_long_side)
    cmyk = colorspace in ("CMYK", "YCCK")
    kwargs = {
        "colorspace": "CMYK" if cmyk else "RGB",
        # tf.image.decode_jpeg's defaults: JDCT_IFAST and fancy upsampling.
        "fastdct": True,
        "fastupsample": False,
        # libjpeg picks the smallest scale whose size reaches these minimums: exactly numerator/8.
        "min_width": -(-width * numerator // 8),
        "min_height": -(-height * numerator // 8),
    }
    try:
        # strict: libjpeg warnings become errors. Without it a truncated file decodes "successfully" with
        # the missing rows filled with grey.
        pixels = simplejpeg.decode_jpeg(data, strict=True, **kwargs)
    except ValueError as exc:
        message = one_line(exc)
        if "Premature end" in message:
            raise DecodeError(f"{label}: {_TRUNCATED_JPEG}") from None
        if message.startswith("Corrupt JPEG data") and "extraneous bytes" not in message:
            raise DecodeError(f"{label}: {message[0].lower()}{message[1:]}") from None
        # Harmless warnings (stray bytes between segments, odd scan parameters, unknown JFIF versions) are
        # common in camera and phone files and the official decoder accepts them: decode again tolerating
        # them, and check the structure for truncation ourselves since warnings are no longer reported.
        try:
            pixels = simplejpeg.decode_jpeg(data, strict=False, **kwargs)
        except ValueError as again:
            raise DecodeError(f"{label}: cannot decode JPEG data: {one_line(again)}") from None
        if not _jpeg_complete(data):
            raise DecodeError(f"{label}: {_TRUNCATED_JPEG}") from None
    if cmyk:
        pixels = _cmyk_to_rgb(pixels, header.adobe)
    scale = "full" if numerator == 8 else f"dct-{Fraction(numerator, 8)}"
    return pixels, scale, (width, height), header.orientation


def _jpeg_pixels_pillow(
    data: bytes, request: DecodeRequest, header: _JpegHeader
) -> tuple[U8, str, tuple[int, int], int]:
    """:func:`_jpeg_pixels` for JPEGs the fast decoder refuses, through Pillow's libjpeg: the same DCT
    scaling and CMYK conversion, but Pillow's accurate IDCT, so about one level off the official decoder
    (recorded as ``pillow-full``, ``pillow-dct-1/2``...)."""
    label = request.label
    if not _jpeg_complete(data):
        raise DecodeError(f"{label}: {_TRUNCATED_JPEG}")
    try:
        with _pillow_guard(request.max_pixels), Image.open(io.BytesIO(data), formats=["JPEG"]) as image:
            width, height = image.size
            _check_pixels(width, height, request)
            numerator = _dct_scale(width, height, request.min_long_side)
            if numerator != 8:
                # Pillow picks the largest scale whose size is at least the one asked for, computed with
                # floor division: ask for floored sizes to get numerator/8 and not the next larger scale.
                image.draft(image.mode, (max(1, width * numerator // 8), max(1, height * numerator // 8)))
            image.load()
            # Pillow has already undone Adobe's inversion: its CMYK is the plain kind.
            if image.mode == "CMYK":
                pixels = _cmyk_to_rgb(np.asarray(image), adobe=False)
            else:
                pixels = np.asarray(_pil_to_rgb_or_l(image, label))
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(f"{label}: corrupt JPEG header") from None
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(exc, request) from None
    except Exception as exc:  # Pillow's plugins raise assorted types on bad data; this is the boundary
        raise DecodeError(f"{label}: corrupt or unsupported JPEG data: {one_line(exc)}") from None
    scale = Fraction(pixels.shape[1], width) if pixels.shape[1] != width else None
    scale_label = "pillow-full" if scale is None else f"pillow-dct-{Fraction(1, round(1 / scale))}"
    return pixels, scale_label, (width, height), header.orientation


def _cmyk_to_rgb(cmyk: U8, adobe: bool) -> U8:
    """CMYK to RGB exactly as tf.image.decode_jpeg does it (integer products, truncating division).
    Adobe applications store CMYK inverted, which their APP14 marker announces."""
    k = cmyk[..., 3:4].astype(np.uint16)
    cmy = cmyk[..., :3].astype(np.uint16)
    if not adobe:
        k = 255 - k
        cmy = 255 - cmy
    cmy *= k
    cmy //= 255
    return cmy.astype(np.uint8)


def _decode_jpeg_file(data: bytes, request: DecodeRequest) -> DecodedImage:
    pixels, scale, stored, orientation = _jpeg_pixels(data, request)
    applied = request.apply_orientation and orientation != 1
    return DecodedImage(
        _finish(pixels, orientation if applied else 1), "JPEG", scale, stored, orientation, applied
    )


# --- Pillow formats ----------------------------------------------------------------------------------------

_heif_lock = threading.Lock()
_heif_registered = False


def _register_heif() -> None:
    """Register the HEIF opener with Pillow once, on first use (importing it costs time and memory)."""
    global _heif_registered
    with _heif_lock:
        if not _heif_registered:
            import pillow_heif

            pillow_heif.register_heif_opener()
            _heif_registered = True


_pillow_guard_lock = threading.Lock()
_pillow_guard_users = 0
_pillow_guard_quiet: warnings.catch_warnings[None] | None = None
# Pillow's own guard: "Image size (N pixels) exceeds limit of M pixels, could be decompression bomb ..."
_PILLOW_BOMB_PIXELS: Final = re.compile(r"\((\d+) pixels\)")


@contextlib.contextmanager
def _pillow_guard(max_pixels: int) -> Iterator[None]:
    """Pillow as musiq uses it: ``max_pixels`` is the size limit that speaks, and Pillow's warnings stay
    off stderr.

    Pillow has a guard of its own, ``PIL.Image.MAX_IMAGE_PIXELS``: a ``DecompressionBombWarning`` above it
    and a ``DecompressionBombError`` above twice it, both raised while the header is read, before musiq
    sees the size. It is raised to ``max_pixels`` when lower (never lowered, and left off when someone
    switched it off), so that an image musiq accepts always opens, and Pillow's error, when it still comes
    first, means more than ``max_pixels`` (:func:`_pillow_bomb_error`). The setting is process-wide;
    it only ever grows to a limit that musiq enforces itself.

    Warnings (the bomb warning, and ``UserWarning``s about odd metadata) are ignored while Pillow works,
    and only those raised by Pillow's modules (``PIL``, ``pillow_heif``). ``warnings.catch_warnings``
    changes process-wide state (until Python 3.14): two blocks that overlap in two threads restore each
    other's filters in the wrong order, which can leave warnings silenced for good. So one block serves
    every decode in flight: the first in enters it, the last out leaves it.
    """
    global _pillow_guard_users, _pillow_guard_quiet
    with _pillow_guard_lock:
        pillow_limit = Image.MAX_IMAGE_PIXELS
        if pillow_limit is not None and pillow_limit < max_pixels:
            Image.MAX_IMAGE_PIXELS = max_pixels
        if _pillow_guard_users == 0:
            quiet = warnings.catch_warnings()
            quiet.__enter__()
            warnings.filterwarnings("ignore", module=r"(PIL|pillow_heif)(\.|$)")
            _pillow_guard_quiet = quiet
        _pillow_guard_users += 1
    try:
        yield
    finally:
        with _pillow_guard_lock:
            _pillow_guard_users -= 1
            if _pillow_guard_users == 0 and _pillow_guard_quiet is not None:
                _pillow_guard_quiet.__exit__(None, None, None)
                _pillow_guard_quiet = None


def _pillow_bomb_error(exc: Exception, request: DecodeRequest) -> DecodeError:
    """musiq's message for an image Pillow's own guard refused: with the limit raised to ``max_pixels``
    (:func:`_pillow_guard`), that guard only fires for more than twice ``max_pixels``."""
    found = _PILLOW_BOMB_PIXELS.search(str(exc))
    size = f"{int(found[1]) / 1e6:.1f} megapixels" if found else "more pixels than Pillow opens"
    return DecodeError(
        f"{request.label}: image has {size}, more than max_pixels={request.max_pixels:_} allows; "
        "raise the max_pixels setting to decode it"
    )


def _pil_orientation(image: Image.Image) -> tuple[int, bool]:
    """(EXIF orientation, already applied by the decoder). The HEIF decoder applies the container's
    rotation/mirror (irot/imir) itself and resets the EXIF tag, keeping the original value in info."""
    if "original_orientation" in image.info:
        return _valid_orientation(image.info["original_orientation"]), True
    try:
        return _valid_orientation(image.getexif().get(_ORIENTATION_TAG)), False
    except Exception:  # a malformed EXIF block must not make the photo unreadable
        return 1, False


def _pil_to_rgb_or_l(image: Image.Image, label: str) -> Image.Image:
    """An 8-bit RGB or L image with the same pixels (see the module doc for alpha and 16-bit rules)."""
    mode = image.mode
    if mode in ("RGB", "L"):
        return image
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if mode == "I":  # 32-bit integers: Pillow's historical mode for 16-bit files, so 16-bit range
            values = np.clip(values, 0, 65535)
        return Image.fromarray(_u16_to_u8(values))
    if mode == "F":
        return Image.fromarray(_float_to_u8(np.asarray(image), label))
    if mode in ("1", "LA", "La"):
        return image.convert("L")
    # RGBA/RGBX/RGBa/P/PA (alpha dropped, stored colour kept), CMYK, YCbCr, LAB, HSV.
    return image.convert("RGB")


def _reduce_factor(size: tuple[int, int], min_long_side: int | None) -> int:
    return 1 if min_long_side is None else max(1, max(size) // min_long_side)


def _raw_tiff_format(image: Image.Image) -> str | None:
    """The RAW format of a TIFF that is really a camera RAW: a DNG, or a NEF/ARW-like file whose IFD0 is
    a reduced-resolution preview (decoding that as the photo would score a thumbnail)."""
    tags = getattr(image, "tag_v2", {})
    if 50706 in tags:  # DNGVersion
        return "RAW:DNG"
    if 330 in tags and int(tags.get(254, 0)) & 1:  # SubIFDs, and IFD0 is a reduced-resolution image
        return "RAW:TIFF"
    return None


def _decode_with_pillow(source: Path | bytes, fmt: str, request: DecodeRequest) -> DecodedImage:
    label = request.label
    if fmt == "HEIF":
        _register_heif()
    stream = source if isinstance(source, Path) else io.BytesIO(source)
    try:
        with _pillow_guard(request.max_pixels), Image.open(stream, formats=[fmt]) as image:
            raw_fmt = _raw_tiff_format(image) if fmt == "TIFF" else None
            if raw_fmt is not None:
                return _decode_raw(source, raw_fmt, request)
            _check_pixels(*image.size, request)
            image.load()
            orientation, container_applied = _pil_orientation(image)
            converted = _pil_to_rgb_or_l(image, label)
            factor = _reduce_factor(converted.size, request.min_long_side)
            if factor > 1:
                # A box average over factor x factor pixels: a proper low-pass before the caller's own
                # resize, and it spares the caller a full-size float copy.
                converted = converted.reduce(factor)
            pixels = np.asarray(converted)
            del converted
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError(f"{label}: corrupt {fmt} data (the header is not valid {fmt})") from None
    except Image.DecompressionBombError as exc:
        raise _pillow_bomb_error(exc, request) from None
    except OSError as exc:
        if isinstance(source, Path) and exc.filename is not None:
            raise read_error(exc, label) from None
        what = "truncated" if "truncated" in str(exc) else "corrupt or unsupported"
        raise DecodeError(f"{label}: {fmt} data is {what}: {one_line(exc)}") from None
    except Exception as exc:  # Pillow's plugins raise assorted types on bad data; this is the boundary
        raise DecodeError(f"{label}: corrupt {fmt} data: {one_line(exc)}") from None
    if container_applied:
        stored = _stored_size(image.size, orientation)
        apply, applied = 1, orientation != 1
    else:
        stored = image.size
        apply = orientation if request.apply_orientation else 1
        applied = apply != 1
    source_label = "full" if factor == 1 else f"reduce-1/{factor}"
    return DecodedImage(_finish(pixels, apply), fmt, source_label, stored, orientation, applied)


# --- camera RAW --------------------------------------------------------------------------------------------

# LibRaw's "flip" (dcraw's convention) to the EXIF orientation it came from.
_FLIP_TO_EXIF: Final = {0: 1, 1: 2, 2: 4, 3: 3, 4: 5, 5: 8, 6: 6, 7: 7}


def _raw_error(exc: Exception, request: DecodeRequest, fmt: str) -> DecodeError:
    label, message = request.label, one_line(exc)
    if isinstance(exc, rawpy.LibRawFileUnsupportedError):
        return DecodeError(
            f"{label}: not a {fmt[4:]} file the RAW decoder can read (unsupported camera or corrupt file)"
        )
    if isinstance(exc, rawpy.LibRawIOError):
        return DecodeError(
            f"{label}: RAW data is truncated or unreadable ({message}); the file may be incompletely copied"
        )
    if isinstance(exc, rawpy.LibRawTooBigError | rawpy.LibRawUnsufficientMemoryError | MemoryError):
        return DecodeError(f"{label}: RAW image too large for the available memory ({message})")
    return DecodeError(f"{label}: cannot decode RAW data: {message}")


def _raw_preview(raw: rawpy.RawPy, min_long_side: int, request: DecodeRequest) -> tuple[U8, str] | None:
    """The embedded preview when its long side reaches ``min_long_side`` and it decodes cleanly."""
    try:
        thumb = raw.extract_thumb()
    except (rawpy.LibRawError, NotImplementedError):
        return None  # none, an unsupported kind, or unreadable: demosaic instead
    if thumb.format == rawpy.ThumbFormat.JPEG and isinstance(thumb.data, bytes):
        try:
            height, width, _, _ = simplejpeg.decode_jpeg_header(thumb.data)
        except ValueError:
            return None
        if max(width, height) < min_long_side:
            return None
        try:
            pixels, scale, _, _ = _jpeg_pixels(thumb.data, request)
        except DecodeError:
            return None
        return pixels, "raw-preview" if scale == "full" else f"raw-preview-{scale}"
    if isinstance(thumb.data, np.ndarray) and thumb.data.ndim == 3 and thumb.data.shape[2] == 3:
        if max(thumb.data.shape[:2]) < min_long_side:
            return None
        return np.asarray(thumb.data, dtype=np.uint8), "raw-preview"
    return None


@contextlib.contextmanager
def open_raw(source: Path | bytes, request: DecodeRequest, fmt: str) -> Iterator[rawpy.RawPy]:
    """A LibRaw handle on a camera RAW file, closed afterwards; LibRaw's and the file system's errors,
    also those raised while it is used, become one-line :class:`DecodeError`s."""
    raw = rawpy.RawPy()
    try:
        with capture_native_stderr():  # LibRaw reports data errors on fd 2, also while parsing
            if isinstance(source, Path):
                raw.open_file(str(source))
            else:
                raw.open_buffer(io.BytesIO(source))
        yield raw
    except DecodeError:
        raise
    except (rawpy.LibRawError, MemoryError) as exc:
        raise _raw_error(exc, request, fmt) from None
    except OSError as exc:
        raise read_error(exc, request.label) from None
    finally:
        raw.close()


def _decode_raw(source: Path | bytes, fmt: str, request: DecodeRequest) -> DecodedImage:
    with open_raw(source, request, fmt) as raw:
        sizes = raw.sizes
        width, height = sizes.width, sizes.height
        _check_pixels(width, height, request)
        # Previews are stored unrotated, like the sensor data; the RAW's own orientation applies to both.
        orientation = _FLIP_TO_EXIF.get(sizes.flip, 1)
        wanted = request.min_long_side
        found = _raw_preview(raw, wanted, request) if wanted is not None else None
        if found is None:
            half = wanted is None or max(width, height) // 2 >= wanted
            with capture_native_stderr():  # LibRaw prints "<file>: Unexpected end of file" on fd 2
                raw.unpack()
            pixels = raw.postprocess(half_size=half, use_camera_wb=True, output_bps=8, user_flip=0)
            found = pixels, "raw-half-demosaic" if half else "raw-demosaic"
    pixels, source_label = found
    applied = request.apply_orientation and orientation != 1
    return DecodedImage(
        _finish(pixels, orientation if applied else 1),
        fmt,
        source_label,
        (width, height),
        orientation,
        applied,
    )
