"""A hash that identifies a photo's image content across metadata edits, renames and moves.

Scores are keyed on it: writing a score, or a keyword added in Lightroom, must not make the photo look new,
and a photo moved to another folder keeps its score. So only the data that defines the stored image is
hashed, never the metadata around it:

* JPEG (``jpeg-scan:``): every marker segment except APP0-APP15 and COM (so DQT, DHT, SOFn, DRI, DAC,
  SOS headers...), and the entropy-coded data of every scan (progressive files have many) with its RSTn
  markers. Fill bytes (0xFF padding before a marker) and stray bytes between segments are skipped: tools
  that rewrite the segments may drop them. Data after EOI is ignored: phones append a video (motion
  photos), cameras a second image (MPF previews, depth maps), and editors may keep or drop those.
* PNG (``png-idat:``): IHDR, PLTE, tRNS and the concatenated IDAT data (re-splitting IDAT chunks keeps the
  hash), plus the animation chunks (acTL, fcTL, fdAT).
* WebP (``webp-bitstream:``): the VP8, VP8L and ALPH bitstreams and the animation chunks (ANIM, ANMF).
  VP8X is left out: adding metadata to a simple WebP adds that chunk.
* TIFF (``tiff-strips:``): the strips or tiles of the first image (IFD0) and the tags needed to decode
  them (size, bits, compression, photometric, samples, predictor, planar configuration, palette, JPEG
  tables, YCbCr layout...). Tags stated at their default value count as absent. Further pages are ignored.
* Camera RAW, DNG included (``raw-sensor:``): the raw sensor values as unpacked by LibRaw, with their
  shape. Cheaper than demosaicing, and independent of every rendering setting.
* Everything else (HEIC/HEIF, AVIF, GIF, BMP, TIFF layouts not parsed here) (``pixels:``): the decoded
  full-resolution RGB pixels (the first frame of an animation), i.e. what the scorer sees.

Decisions:

* Colour profiles and colour-space tags (JPEG APP2 ICC and APP14 Adobe colour transform, PNG
  iCCP/sRGB/gAMA/cHRM/cICP, WebP ICCP, TIFF ICC tag) are left out. They change how samples are rendered,
  not the samples; tools that strip metadata remove them with the rest, and a colour-management fix should
  not make a photo "new". (Stripping APP14 from a rare Adobe CMYK JPEG does change its colours.)
* Orientation is left out: the hash is of the image as stored, and the pixel fallback decodes without
  applying EXIF orientation. Rotating a photo in a photo manager (an orientation tag edit) keeps its hash;
  callers that must notice compare the orientation themselves. HEIF is the exception: its decoder always
  applies the container's rotation and mirroring (irot/imir), so an edit of those does change the hash.
* The hash identifies content; it does not validate it. Corrupt compressed data that still has an intact
  structure gives a different hash, not an error; truncated or structurally broken files raise
  :class:`~musiq_daemon.errors.DecodeError`.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Final

import numpy as np
import rawpy

# The decoder's helpers are shared so that both report unreadable files in the same words.
from musiq_daemon.decode import (
    DEFAULT_MAX_PIXELS,
    DecodeRequest,
    decode_image,
    display_name,
    one_line,
    open_raw,
    read_error,
    read_head,
    sniff_format,
)
from musiq_daemon.errors import DecodeError

__all__ = ["content_hash", "content_hash_file"]

_HEAD_BYTES: Final = 4096


def content_hash(data: bytes, *, path: Path | None = None) -> str:
    """The content hash of a photo's bytes, e.g. ``jpeg-scan:sha256:<64 hex digits>``. ``path`` (not
    read) names the file in messages and gives its suffix, which identifies some RAW formats."""
    label = display_name(str(path)) if path is not None else "<image data>"
    if not data:
        raise DecodeError(f"{label}: no image data (0 bytes)")
    fmt = sniff_format(data[:_HEAD_BYTES], path.suffix if path is not None else "")
    return _hash(data, fmt, label)


def content_hash_file(path: Path) -> str:
    """:func:`content_hash` of a file. RAW and pixel-hashed files are decoded from the file directly, the
    others read into memory once."""
    path = Path(path)
    label = display_name(str(path))
    head = read_head(path, label)  # refuses directories, FIFOs and empty files with a clear message
    fmt = sniff_format(head, path.suffix)
    if fmt is not None and fmt.startswith("RAW:"):
        return _raw_hash(path, fmt, label)
    if fmt not in _PARSERS:
        return _pixel_hash(path, label)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise read_error(exc, label) from None
    return _hash(data, fmt, label, source=path)


def _hash(data: bytes, fmt: str | None, label: str, *, source: Path | None = None) -> str:
    decodable: Path | bytes = source if source is not None else data  # decoders read files directly
    if fmt is not None and fmt.startswith("RAW:"):
        return _raw_hash(decodable, fmt, label)
    prefix, parser = _PARSERS.get(fmt or "", ("", None))
    if parser is None:
        return _pixel_hash(decodable, label)
    parts = parser(data, label)
    if parts is None:  # a layout left to a decoder: a camera RAW inside a .tif, a TIFF without byte counts
        raw = _tiff_raw_format(data)
        return _raw_hash(decodable, raw, label) if raw else _pixel_hash(decodable, label)
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part)
    return f"{prefix}:sha256:{digest.hexdigest()}"


# --- JPEG --------------------------------------------------------------------------------------------------

# The end of entropy-coded data: 0xFF followed by anything but a stuffed zero, an RSTn or another 0xFF
# (fill byte; the marker follows it).
_SCAN_END: Final = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")
_STANDALONE: Final = frozenset({0x01, 0xD8, *range(0xD0, 0xD8)})  # TEM, SOI, RST0-7: no length field
_FRAMES: Final = frozenset({*range(0xC0, 0xD0)} - {0xC4, 0xC8, 0xCC}) | {0xF7}  # SOF0-15, JPEG-LS SOF55


def _jpeg_parts(raw: bytes, label: str) -> list[memoryview]:
    truncated = DecodeError(
        f"{label}: JPEG data is truncated (it ends before the end of the image); "
        "the file may be incompletely copied or still being written"
    )
    data = memoryview(raw)
    parts: list[memoryview] = []
    end = len(data)
    pos, frame, scans = 2, False, 0
    while True:
        pos = raw.find(b"\xff", pos)  # bytes between segments are skipped, as libjpeg does
        if pos < 0 or pos + 2 > end:
            raise truncated
        marker = raw[pos + 1]
        if marker in (0x00, 0xFF) or marker in _STANDALONE:
            pos += 1 if marker in (0x00, 0xFF) else 2
            continue
        if marker == 0xD9:  # EOI: what follows is not this image (see the module doc)
            break
        if pos + 4 > end:
            raise truncated
        length = int.from_bytes(raw[pos + 2 : pos + 4], "big")
        if length < 2:
            raise DecodeError(f"{label}: corrupt JPEG data (a segment of length {length})")
        segment_end = pos + 2 + length
        if segment_end > end:
            raise truncated
        if not (0xE0 <= marker <= 0xEF or marker == 0xFE):  # APPn and COM are metadata
            parts.append(data[pos:segment_end])
            frame = frame or marker in _FRAMES
        pos = segment_end
        if marker == 0xDA:
            found = _SCAN_END.search(raw, pos)
            if found is None:
                raise truncated
            scan_end = found.start()
            while scan_end > pos and raw[scan_end - 1] == 0xFF:  # fill bytes (coded data cannot end so)
                scan_end -= 1
            parts.append(data[pos:scan_end])
            pos, scans = found.start(), scans + 1
    if not frame or not scans:
        raise DecodeError(f"{label}: corrupt JPEG data (no {'frame header' if not frame else 'scan'})")
    return parts


# --- PNG ---------------------------------------------------------------------------------------------------

_PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
_PNG_KEPT: Final = frozenset({b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"acTL", b"fcTL", b"fdAT"})


def _png_parts(raw: bytes, label: str) -> list[memoryview | bytes]:
    data = memoryview(raw)
    parts: list[memoryview | bytes] = []
    idat: list[memoryview] = []
    pos, end = len(_PNG_SIGNATURE), len(data)

    def flush_idat() -> None:
        # One framed run however the encoder or a metadata tool split the stream into chunks.
        if idat:
            parts.extend((b"IDAT", sum(len(p) for p in idat).to_bytes(8, "big"), *idat))
            idat.clear()

    first = True
    while True:
        if pos + 8 > end:
            raise DecodeError(f"{label}: PNG data is truncated (no IEND chunk)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        if length > 0x7FFFFFFF or pos + 12 + length > end:
            raise DecodeError(f"{label}: PNG data is truncated or corrupt (chunk {kind!r})")
        if first and kind != b"IHDR":
            raise DecodeError(f"{label}: corrupt PNG data (the first chunk is not IHDR)")
        first = False
        body = data[pos + 8 : pos + 8 + length]
        if kind == b"IDAT":
            idat.append(body)
        else:
            flush_idat()
            if kind == b"IEND":
                break
            if kind in _PNG_KEPT:
                parts.extend((kind, length.to_bytes(4, "big"), body))
        pos += 12 + length
    if not any(part == b"IDAT" for part in parts if isinstance(part, bytes)):
        raise DecodeError(f"{label}: corrupt PNG data (no image data)")
    return parts


# --- WebP --------------------------------------------------------------------------------------------------

_WEBP_KEPT: Final = frozenset({b"VP8 ", b"VP8L", b"ALPH", b"ANIM", b"ANMF"})
_WEBP_IMAGE: Final = frozenset({b"VP8 ", b"VP8L", b"ANMF"})


def _webp_parts(raw: bytes, label: str) -> list[memoryview]:
    data = memoryview(raw)
    riff_end = 8 + int.from_bytes(data[4:8], "little")
    if riff_end > len(data):
        raise DecodeError(f"{label}: WebP data is truncated")
    parts: list[memoryview] = []
    pos, image = 12, False
    while pos + 8 <= riff_end:
        kind = bytes(data[pos : pos + 4])
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        if pos + 8 + size > riff_end:
            raise DecodeError(f"{label}: WebP data is truncated or corrupt (chunk {kind!r})")
        if kind in _WEBP_KEPT:
            parts.append(data[pos : pos + 8 + size])
            image = image or kind in _WEBP_IMAGE
        pos += 8 + size + (size & 1)  # chunks are padded to an even size
    if not image:
        raise DecodeError(f"{label}: corrupt WebP data (no image bitstream)")
    return parts


# --- TIFF --------------------------------------------------------------------------------------------------

_TIFF_TYPES: Final = {  # type: (struct code, bytes per value)
    1: ("B", 1), 2: ("B", 1), 3: ("H", 2), 4: ("I", 4), 5: ("I", 4), 6: ("b", 1), 7: ("B", 1),
    8: ("h", 2), 9: ("i", 4), 10: ("i", 4), 11: ("f", 4), 12: ("d", 8), 13: ("I", 4),
    16: ("Q", 8), 17: ("q", 8), 18: ("Q", 8),
}  # fmt: skip
_RATIONALS: Final = frozenset({5, 10})  # two values (numerator, denominator) per rational
# Tags that decide how the strip/tile data turns into pixels (TIFF 6.0 names), hashed with the data.
_TIFF_PIXEL_TAGS: Final = (
    256, 257, 258, 259, 262, 266, 277, 278, 284, 317, 320, 322, 323, 338, 339, 347, 529, 530, 532,
)  # fmt: skip
_TIFF_DEFAULTS: Final = {259: (1,), 266: (1,), 284: (1,), 317: (1,)}  # Compression, FillOrder, ...
_STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS = 273, 279, 324, 325
_NEW_SUBFILE_TYPE, _IMAGE_LENGTH, _ROWS_PER_STRIP, _SUBIFDS, _SAMPLE_FORMAT, _DNG_VERSION = (
    254, 257, 278, 330, 339, 50706,
)  # fmt: skip

# Only these are unpacked: other tags can be huge (Photoshop layers, embedded previews, maker notes).
_TIFF_WANTED: Final = frozenset(
    {*_TIFF_PIXEL_TAGS, _STRIP_OFFSETS, _STRIP_COUNTS, _TILE_OFFSETS, _TILE_COUNTS}
    | {_NEW_SUBFILE_TYPE, _SUBIFDS, _DNG_VERSION}
)

_TiffValue = tuple[int | float, ...]


def _tiff_ifd0(data: memoryview, label: str) -> dict[int, _TiffValue]:
    """IFD0's tags that matter here, with their values (numbers; rationals as numerator, denominator
    pairs)."""
    broken = DecodeError(f"{label}: TIFF data is truncated or corrupt (its first directory is unreadable)")
    order = "<" if bytes(data[:2]) == b"II" else ">"
    try:
        big = struct.unpack_from(order + "H", data, 2)[0] == 43
        if big:
            first = struct.unpack_from(order + "Q", data, 8)[0]
            count = struct.unpack_from(order + "Q", data, first)[0]
        else:
            first = struct.unpack_from(order + "I", data, 4)[0]
            count = struct.unpack_from(order + "H", data, first)[0]
        entry_size, inline = (20, 8) if big else (12, 4)
        entries_at = first + (8 if big else 2)
        if entries_at + count * entry_size > len(data):
            raise broken
        tags: dict[int, _TiffValue] = {}
        for i in range(count):
            at = entries_at + i * entry_size
            tag, kind = struct.unpack_from(order + "HH", data, at)
            number = struct.unpack_from(order + ("Q" if big else "I"), data, at + 4)[0]
            if tag not in _TIFF_WANTED or kind not in _TIFF_TYPES:
                continue  # not needed, or of an unknown type (readers skip those entries)
            code, width = _TIFF_TYPES[kind]
            values = number * (2 if kind in _RATIONALS else 1)
            size = values * width
            if size <= inline:
                value_at = at + 4 + inline
            else:
                value_at = struct.unpack_from(order + ("Q" if big else "I"), data, at + 4 + inline)[0]
            if value_at + size > len(data):
                raise broken
            tags[tag] = struct.unpack_from(f"{order}{values}{code}", data, value_at)
    except struct.error:
        raise broken from None
    return tags


def _tiff_raw_format(data: bytes) -> str | None:
    """The RAW format of a TIFF that is really a camera RAW, as the decoder sees it: a DNG, or a NEF-like
    file whose IFD0 is a reduced-resolution preview and the photo a SubIFD. None for a plain TIFF."""
    try:
        return _raw_kind(_tiff_ifd0(memoryview(data), ""))
    except DecodeError:
        return None


def _raw_kind(tags: dict[int, _TiffValue]) -> str | None:
    if _DNG_VERSION in tags:
        return "RAW:DNG"
    if _SUBIFDS in tags and int(tags.get(_NEW_SUBFILE_TYPE, (0,))[0]) & 1:
        return "RAW:TIFF"
    return None


def _tiff_parts(raw: bytes, label: str) -> list[memoryview | bytes] | None:
    data = memoryview(raw)
    tags = _tiff_ifd0(data, label)
    if _raw_kind(tags) is not None:
        return None  # camera RAW: hashed from the sensor data
    if _TILE_OFFSETS in tags:
        offsets, counts = tags[_TILE_OFFSETS], tags.get(_TILE_COUNTS)
    else:
        offsets, counts = tags.get(_STRIP_OFFSETS, ()), tags.get(_STRIP_COUNTS)
    if not offsets or counts is None or len(counts) != len(offsets):
        return None  # no byte counts (allowed for old uncompressed files): let the decoder read it
    parts: list[memoryview | bytes] = []
    for tag in _TIFF_PIXEL_TAGS:
        value = tags.get(tag)
        if value is None or value == _TIFF_DEFAULTS.get(tag):
            continue
        if tag == _ROWS_PER_STRIP and _IMAGE_LENGTH in tags:
            value = (min(int(value[0]), int(tags[_IMAGE_LENGTH][0])),)  # larger than the image = the image
        if tag == _SAMPLE_FORMAT and set(value) == {1}:
            continue  # unsigned integers, the default
        parts.append(f"{tag}={value!r};".encode())
    for offset, count in zip(offsets, counts, strict=True):
        start, size = int(offset), int(count)
        if start + size > len(data):
            raise DecodeError(f"{label}: TIFF data is truncated (image data ends past the end of the file)")
        parts.extend((size.to_bytes(8, "big"), data[start : start + size]))
    return parts


# --- decoded data: camera RAW and everything else ----------------------------------------------------------


def _raw_hash(source: Path | bytes, fmt: str, label: str) -> str:
    with open_raw(source, DecodeRequest(label, None, False, DEFAULT_MAX_PIXELS), fmt) as raw:
        try:
            sizes = raw.sizes
            if sizes.raw_width * sizes.raw_height > DEFAULT_MAX_PIXELS:
                raise DecodeError(
                    f"{label}: RAW image is {sizes.raw_width}x{sizes.raw_height}, more than musiqd decodes"
                )
            values = np.ascontiguousarray(raw.raw_image)  # unpacks (and decompresses) the sensor data
            digest = hashlib.sha256(f"{values.dtype.str}{values.shape}".encode())
            digest.update(values.data.cast("B"))
        except (DecodeError, rawpy.LibRawError, MemoryError, OSError):
            raise  # open_raw words them
        except Exception as exc:  # rawpy raises assorted types for images without a sensor mosaic
            raise DecodeError(f"{label}: cannot read the RAW sensor data: {one_line(exc)}") from None
    return f"raw-sensor:sha256:{digest.hexdigest()}"


def _pixel_hash(source: Path | bytes, label: str) -> str:
    decoded = decode_image(source, apply_orientation=False, name=label)
    pixels = decoded.pixels
    digest = hashlib.sha256(f"{pixels.shape}".encode())
    digest.update(pixels.data.cast("B"))
    return f"pixels:sha256:{digest.hexdigest()}"


_Parser = Callable[[bytes, str], Sequence[memoryview | bytes] | None]
_PARSERS: Final[dict[str, tuple[str, _Parser]]] = {  # format: (hash prefix, parser)
    "JPEG": ("jpeg-scan", _jpeg_parts),
    "PNG": ("png-idat", _png_parts),
    "WEBP": ("webp-bitstream", _webp_parts),
    "TIFF": ("tiff-strips", _tiff_parts),
}
