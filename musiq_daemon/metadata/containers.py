"""Where XMP lives in a JPEG, PNG or WebP file, and how to replace it while every other byte stays.

A metadata library that writes a file re-serialises everything it understands: EXIF and maker notes get
new offsets (some makers' notes break), only the first of several Photoshop IPTC blocks survives, IPTC
times gain a zone. musiqd owns only its XMP, so it writes only that, the way exiftool does:

* JPEG: the standard XMP segment (APP1 ``http://ns.adobe.com/xap/1.0/``) and the extended XMP segments
  (APP1 ``http://ns.adobe.com/xmp/extension/``) that belong to it are replaced; a JPEG without XMP gets
  the segment after its leading APP0/APP1 segments. Every other segment, and everything from the first
  scan on, is copied byte for byte.
* PNG: the ``iTXt`` chunk with keyword ``XML:com.adobe.xmp`` is replaced in place (written uncompressed),
  or inserted before the first ``IDAT``.
* WebP: the ``XMP `` chunk is replaced or appended, the XMP flag of ``VP8X`` set; a simple (VP8/VP8L only)
  WebP gets the ``VP8X`` header the extended format needs, its canvas size read from the bitstream.

EXIF rating mirrors are patched in place only: the value of an existing IFD0 ``Rating``/``RatingPercent``
entry is overwritten where it stands (same type, same length); nothing is added to EXIF.

:meth:`Layout.others` lists every part the write must keep, for the writer's byte-for-byte check.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from dataclasses import dataclass
from typing import Final

from musiq_daemon.metadata import packet

XMP_HEADER: Final = b"http://ns.adobe.com/xap/1.0/\x00"
EXTENDED_HEADER: Final = b"http://ns.adobe.com/xmp/extension/\x00"
EXIF_HEADER: Final = b"Exif\x00\x00"
PNG_SIGNATURE: Final = b"\x89PNG\r\n\x1a\n"
PNG_XMP_KEYWORD: Final = b"XML:com.adobe.xmp"
#: The most a standard XMP segment can carry (65533 bytes of segment minus the header).
MAX_STANDARD: Final = 65533 - len(XMP_HEADER)
#: Extended XMP data per segment (65533 minus header, GUID, full length and offset), rounded down.
EXTENDED_CHUNK: Final = 65400

_EXTENDED_MIN: Final = len(EXTENDED_HEADER) + 40  # header, GUID, full length, offset

EXIF_RATING: Final = 0x4746
EXIF_RATING_PERCENT: Final = 0x4749


SPLICED_FORMATS: Final = frozenset({"JPEG", "PNG", "WEBP"})


def extended_guid(extended: bytes) -> str:
    """The GUID of an extended XMP packet: its MD5 digest in upper-case hex (XMP specification part 3)."""
    return hashlib.md5(extended).hexdigest().upper()


class LayoutError(ValueError):
    """The file's structure cannot be followed; the message says how, in words for the owner."""


@dataclass
class Layout:
    """The parts of one file: ``parts`` in order, each (kind, bytes); kinds ``xmp``, ``xmp-ext``, ``exif``
    and ``other``. ``packet`` is the XMP (extended XMP merged in), None when the file has none."""

    fmt: str
    parts: list[tuple[str, bytes]]
    packet: bytes | None
    exif: bytes | None  # the TIFF structure of the EXIF block

    def others(self) -> list[bytes]:
        """Every part that is neither XMP nor EXIF (EXIF is compared after patching)."""
        return [data for kind, data in self.parts if kind not in ("xmp", "xmp-ext", "exif", "vp8x")]

    def rebuild(self, standard: bytes, extended: bytes | None, exif: bytes | None) -> bytes:
        """The file with its XMP replaced by ``standard`` (+ ``extended`` for a JPEG) and its EXIF block
        by ``exif`` (same length: a patched copy), every other part as it was."""
        if self.fmt == "JPEG":
            return _jpeg_rebuild(self, standard, extended, exif)
        if extended is not None:
            raise LayoutError("extended XMP exists only in JPEG")
        if self.fmt == "PNG":
            return _png_rebuild(self, standard, exif)
        return _webp_rebuild(self, standard, exif)


def read_layout(data: bytes, fmt: str) -> Layout:
    if fmt == "JPEG":
        return _jpeg_layout(data)
    if fmt == "PNG":
        return _png_layout(data)
    if fmt == "WEBP":
        return _webp_layout(data)
    raise LayoutError(f"musiqd does not splice metadata into {fmt} files")


# --- JPEG ---------------------------------------------------------------------------------------------------


def _segment(marker: int, payload: bytes) -> bytes:
    return bytes((0xFF, marker)) + (len(payload) + 2).to_bytes(2, "big") + payload


def _jpeg_layout(data: bytes) -> Layout:
    if not data.startswith(b"\xff\xd8"):
        raise LayoutError("not a JPEG (no start-of-image marker)")
    parts: list[tuple[str, bytes]] = [("other", data[:2])]
    pos = 2
    standard: list[bytes] = []
    extended: list[tuple[bytes, int, int, bytes]] = []  # guid, full length, offset, data
    exif: bytes | None = None
    while True:
        if pos + 4 > len(data) or data[pos] != 0xFF:
            raise LayoutError("its JPEG structure is broken before the image data")
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            parts.append(("other", data[pos : pos + 1]))
            pos += 1
            continue
        if marker in (0xDA, 0xD9):  # start of scan: the rest is image data
            parts.append(("other", data[pos:]))
            break
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        end = pos + 2 + length
        if length < 2 or end > len(data):
            raise LayoutError("its JPEG structure is broken (a segment runs past the end)")
        segment = data[pos:end]
        payload = segment[4:]
        kind = "other"
        if marker == 0xE1 and payload.startswith(XMP_HEADER):
            kind = "xmp"
            standard.append(payload[len(XMP_HEADER) :])
        elif marker == 0xE1 and payload.startswith(EXTENDED_HEADER) and len(payload) >= _EXTENDED_MIN:
            at = len(EXTENDED_HEADER)
            guid = payload[at : at + 32]
            full, offset = struct.unpack(">II", payload[at + 32 : at + 40])
            extended.append((guid, full, offset, payload[at + 40 :]))
            kind = "xmp-ext:" + guid.decode("latin-1")
        elif marker == 0xE1 and payload.startswith(EXIF_HEADER) and exif is None:
            kind = "exif"
            exif = payload[len(EXIF_HEADER) :]
        parts.append((kind, segment))
        pos = end
    layout = Layout("JPEG", parts, None, exif)
    if len(standard) > 1 and len(set(standard)) > 1:
        raise packet.UnrepairableError("its JPEG holds two different XMP packets")
    if not standard:
        return _keep_unowned_extensions(layout, None)
    main: bytes = standard[0]
    guids = packet.property_values(main, packet.XMP_NOTE_NS + "HasExtendedXMP")
    wanted = guids[0].encode("latin-1", "replace") if len(set(guids)) == 1 else None
    chunks = sorted((offset, chunk, full) for g, full, offset, chunk in extended if g == wanted)
    if wanted is not None and chunks:
        whole = b"".join(chunk for _, chunk, _ in chunks)
        if len(whole) != chunks[0][2] or any(o != sum(len(c) for _, c, _ in chunks[:i]) for i, (o, _, _)
                                            in enumerate(chunks)):  # fmt: skip
            raise packet.UnrepairableError("its extended XMP is incomplete (a part is missing)")
        merged = packet.merge_extended(main, whole)
        layout.packet = merged
    else:
        layout.packet = main
    return _keep_unowned_extensions(layout, wanted if chunks else None)


def _keep_unowned_extensions(layout: Layout, guid: bytes | None) -> Layout:
    """Extended XMP segments of another GUID belong to no packet (readers ignore them): kept as they are."""
    owned = "xmp-ext:" + guid.decode("latin-1") if guid is not None else None
    layout.parts = [
        ("xmp-ext" if kind == owned else "other" if kind.startswith("xmp-ext:") else kind, data)
        for kind, data in layout.parts
    ]
    return layout


def _jpeg_rebuild(layout: Layout, standard: bytes, extended: bytes | None, exif: bytes | None) -> bytes:
    new_xmp = [_segment(0xE1, XMP_HEADER + standard)]
    if len(new_xmp[0]) > 65537:
        raise LayoutError("the XMP packet is too large for one JPEG segment")
    if extended is not None:
        guid = extended_guid(extended).encode()
        for offset in range(0, len(extended), EXTENDED_CHUNK):
            chunk = extended[offset : offset + EXTENDED_CHUNK]
            new_xmp.append(
                _segment(0xE1, EXTENDED_HEADER + guid + struct.pack(">II", len(extended), offset) + chunk)
            )
    out: list[bytes] = []
    placed = False
    for kind, data in layout.parts:
        if kind == "xmp":
            if not placed:
                out += new_xmp
                placed = True
        elif kind == "xmp-ext":
            continue
        elif kind == "exif" and exif is not None:
            out.append(data[:4] + EXIF_HEADER + exif)
        else:
            out.append(data)
    if not placed:  # after SOI and the leading APP0/APP1 segments (JFIF, EXIF), where exiftool puts it
        at = 1
        while at < len(out) and out[at][:2] in (b"\xff\xe0", b"\xff\xe1"):
            at += 1
        out[at:at] = new_xmp
    return b"".join(out)


# --- PNG ----------------------------------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


def _png_layout(data: bytes) -> Layout:
    if not data.startswith(PNG_SIGNATURE):
        raise LayoutError("not a PNG (no signature)")
    parts: list[tuple[str, bytes]] = [("other", data[:8])]
    pos, xmp, exif = 8, None, None
    while pos < len(data):
        if pos + 12 > len(data):
            raise LayoutError("its PNG structure is broken (a chunk runs past the end)")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        end = pos + 12 + length
        if end > len(data):
            raise LayoutError("its PNG structure is broken (a chunk runs past the end)")
        body = data[pos + 8 : pos + 8 + length]
        tag = "other"
        if kind == b"iTXt" and body.startswith(PNG_XMP_KEYWORD + b"\x00"):
            if xmp is not None:
                raise packet.UnrepairableError("its PNG holds two XMP packets")
            xmp = _itxt_text(body)
            tag = "xmp"
        elif kind == b"eXIf" and exif is None:
            exif, tag = body, "exif"
        parts.append((tag, data[pos:end]))
        pos = end
        if kind == b"IEND":
            if pos < len(data):
                parts.append(("other", data[pos:]))
            break
    return Layout("PNG", parts, xmp, exif)


def _itxt_text(body: bytes) -> bytes:
    rest = body[len(PNG_XMP_KEYWORD) + 1 :]
    if len(rest) < 2:
        raise packet.UnrepairableError("its PNG XMP chunk is truncated")
    compressed, rest = rest[0], rest[2:]
    _, _, rest = rest.partition(b"\x00")  # language tag
    _, _, text = rest.partition(b"\x00")  # translated keyword
    if compressed:
        try:
            return zlib.decompress(text)
        except zlib.error:
            raise packet.UnrepairableError("its PNG XMP chunk is corrupt (bad compressed data)") from None
    return text


def _png_rebuild(layout: Layout, standard: bytes, exif: bytes | None) -> bytes:
    chunk = _png_chunk(b"iTXt", PNG_XMP_KEYWORD + b"\x00\x00\x00\x00\x00" + standard)
    out: list[bytes] = []
    placed = False
    for kind, data in layout.parts:
        if kind == "xmp":
            out.append(chunk)
            placed = True
        elif kind == "exif" and exif is not None:
            out.append(_png_chunk(b"eXIf", exif))
        else:
            if not placed and data[4:8] == b"IDAT":
                out.append(chunk)
                placed = True
            out.append(data)
    return b"".join(out)


# --- WebP ---------------------------------------------------------------------------------------------------

_VP8X_XMP: Final = 0x04
_VP8X_ALPHA: Final = 0x10


def _webp_layout(data: bytes) -> Layout:
    if data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise LayoutError("not a WebP (no RIFF WEBP header)")
    end = min(len(data), 8 + int.from_bytes(data[4:8], "little"))
    parts: list[tuple[str, bytes]] = []
    pos, xmp, exif = 12, None, None
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        stop = pos + 8 + size + (size & 1)
        if pos + 8 + size > end:
            raise LayoutError("its WebP structure is broken (a chunk runs past the end)")
        chunk = data[pos : min(stop, end)]
        tag = "other"
        if kind == b"XMP ":
            if xmp is not None:
                raise packet.UnrepairableError("its WebP holds two XMP packets")
            xmp, tag = data[pos + 8 : pos + 8 + size], "xmp"
        elif kind == b"EXIF" and exif is None:
            exif, tag = data[pos + 8 : pos + 8 + size], "exif"
            if exif.startswith(EXIF_HEADER):
                exif = exif[len(EXIF_HEADER) :]
        elif kind == b"VP8X":
            tag = "vp8x"
        parts.append((tag, chunk))
        pos = stop
    if end < len(data):
        parts.append(("trailer", data[end:]))
    return Layout("WEBP", parts, xmp, exif)


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + len(body).to_bytes(4, "little") + body + (b"\x00" if len(body) & 1 else b"")


def _canvas(parts: list[tuple[str, bytes]]) -> tuple[int, int, bool]:
    """Width, height and alpha of a simple WebP, from its VP8 or VP8L bitstream header."""
    for _, data in parts:
        kind, body = data[:4], data[8:]
        if kind == b"VP8 " and len(body) >= 10 and body[3:6] == b"\x9d\x01\x2a":
            width, height = struct.unpack("<HH", body[6:10])
            return width & 0x3FFF, height & 0x3FFF, False
        if kind == b"VP8L" and len(body) >= 5 and body[0] == 0x2F:
            bits = int.from_bytes(body[1:5], "little")
            return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1, bool((bits >> 28) & 1)
    raise LayoutError("its WebP bitstream header is unreadable")


def _webp_rebuild(layout: Layout, standard: bytes, exif: bytes | None) -> bytes:
    out: list[bytes] = []
    has_vp8x = any(kind == "vp8x" for kind, _ in layout.parts)
    if not has_vp8x:
        width, height, alpha = _canvas(layout.parts)
        flags = _VP8X_XMP | (_VP8X_ALPHA if alpha else 0)
        size = (width - 1).to_bytes(3, "little") + (height - 1).to_bytes(3, "little")
        body = bytes((flags, 0, 0, 0)) + size
        out.append(_riff_chunk(b"VP8X", body))
    placed = False
    for kind, data in layout.parts:
        if kind == "vp8x":
            out.append(data[:8] + bytes((data[8] | _VP8X_XMP,)) + data[9:])
        elif kind == "xmp":
            out.append(_riff_chunk(b"XMP ", standard))
            placed = True
        elif kind == "exif" and exif is not None:
            prefix = EXIF_HEADER if data[8:14] == EXIF_HEADER else b""
            out.append(_riff_chunk(b"EXIF", prefix + exif))
        elif kind != "trailer":
            out.append(data)
    if not placed:
        out.append(_riff_chunk(b"XMP ", standard))
    body = b"".join(out)
    trailer = b"".join(data for kind, data in layout.parts if kind == "trailer")
    return b"RIFF" + (len(body) + 4).to_bytes(4, "little") + b"WEBP" + body + trailer


def vp8x_flags_apart_from_xmp(layout: Layout) -> bytes | None:
    """The VP8X chunk with the XMP flag cleared (what a write may not change), None without one."""
    for kind, data in layout.parts:
        if kind == "vp8x":
            return data[:8] + bytes((data[8] & ~_VP8X_XMP & 0xFF,)) + data[9:]
    return None


# --- EXIF rating entries ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExifEntry:
    value: int
    at: int  # offset of the value in the TIFF structure
    fmt: str  # struct code with byte order


def exif_ratings(tiff: bytes | None) -> dict[int, ExifEntry]:
    """IFD0's Rating and RatingPercent entries that hold one SHORT or LONG inline; others are absent."""
    if tiff is None or len(tiff) < 8 or tiff[:2] not in (b"II", b"MM"):
        return {}
    order = "<" if tiff[:2] == b"II" else ">"
    try:
        first = struct.unpack_from(order + "I", tiff, 4)[0]
        count = struct.unpack_from(order + "H", tiff, first)[0]
        found: dict[int, ExifEntry] = {}
        for i in range(count):
            at = first + 2 + 12 * i
            tag, kind, number = struct.unpack_from(order + "HHI", tiff, at)
            if tag in (EXIF_RATING, EXIF_RATING_PERCENT) and number == 1 and kind in (3, 4):
                code = order + ("H" if kind == 3 else "I")
                found[tag] = ExifEntry(struct.unpack_from(code, tiff, at + 8)[0], at + 8, code)
        return found
    except struct.error:
        return {}


def patch_exif(tiff: bytes, values: dict[int, int]) -> bytes:
    """``tiff`` with the given IFD0 rating entries overwritten in place (entries that exist only)."""
    entries = exif_ratings(tiff)
    out = bytearray(tiff)
    for tag, value in values.items():
        entry = entries.get(tag)
        if entry is not None:
            struct.pack_into(entry.fmt, out, entry.at, value)
    return bytes(out)


TIFF_IPTC: Final = 33723  # IPTC-NAA
TIFF_PHOTOSHOP: Final = 34377  # Photoshop image resources (where further IPTC blocks live)
_TIFF_SIZES: Final = {1: 1, 2: 1, 3: 2, 4: 4, 5: 8, 6: 1, 7: 1, 8: 2, 9: 4, 10: 8, 11: 4, 12: 8, 13: 4}


def tiff_blobs(data: bytes, tags: tuple[int, ...] = (TIFF_IPTC, TIFF_PHOTOSHOP)) -> dict[int, bytes]:
    """The raw bytes of IFD0 entries of a classic TIFF (IPTC and Photoshop blocks by default): what a
    metadata library that rewrites the file must copy as they are. Empty when the file is not readable
    as such."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return {}
    order = "<" if data[:2] == b"II" else ">"
    out: dict[int, bytes] = {}
    try:
        first = struct.unpack_from(order + "I", data, 4)[0]
        count = struct.unpack_from(order + "H", data, first)[0]
        for i in range(count):
            at = first + 2 + 12 * i
            tag, kind, number = struct.unpack_from(order + "HHI", data, at)
            if tag not in tags or kind not in _TIFF_SIZES:
                continue
            size = number * _TIFF_SIZES[kind]
            where = at + 8 if size <= 4 else struct.unpack_from(order + "I", data, at + 8)[0]
            out[tag] = data[where : where + size]
    except struct.error:
        return {}
    return out
