"""A corpus of photos whose metadata has the shapes found in real collections, built byte by byte.

Metadata writers must leave everything they do not own exactly as it was. That is only tested when the
photos carry what real photos carry: maker notes with offsets relative to three different origins,
big-endian EXIF, IPTC in two Photoshop blocks, XMP with duplicate properties, empty containers, extended
XMP split over several APP1 segments, packets at the size limit, odd packet wrappers, keyword containers
of four programs, and ratings in five places. Nothing here is copied from anyone's photo: every segment,
chunk, IFD and packet is generated here, modelled on what cameras and photo programs write.

:func:`build_corpus` writes every photo into a directory and returns a :class:`CorpusPhoto` per file (its
owner's stars and keywords, its shapes, and whether its XMP can be repaired). :func:`exiftool_snapshot`
and :func:`foreign_diff` compare a photo before and after a write with exiftool as the independent reader.

The owner in this corpus keyword-tags the photos of themselves ``mine`` (under ``people``); every photo
that has keywords has that one, in the containers its program writes.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import re
import struct
import subprocess
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import cache
from pathlib import Path
from typing import Final, Literal

from imagegen import nikon_makernote, scene, srgb_icc
from PIL import Image

ByteOrder = Literal["<", ">"]
Repair = Literal["lossless", "unrepairable"]

WIDTH, HEIGHT = 320, 240
MINE: Final = "mine"
PEOPLE: Final = "people"


@dataclass
class CorpusPhoto:
    """One generated photo and what its owner put in it."""

    path: Path
    name: str
    description: str
    owner_rating: int | None  # stars the owner set: -1 rejected, 0 explicitly unrated; None: no rating at all
    owner_keywords: list[str]  # the owner's keywords as plain leaves ("mine", never "people|mine")
    shapes: set[str] = field(default_factory=set)
    expect_xmp_repair: Repair | None = None  # duplicates: "lossless" (all identical), "unrepairable"


# --- shapes ---------------------------------------------------------------------------------------------
# Each name below is used by at least one photo (the corpus tests check that).

SHAPES: Final = frozenset(
    {
        # EXIF as cameras write it
        "exif-little-endian",
        "exif-big-endian",
        "exif-interop",  # ExifIFD -> InteropIFD
        "exif-thumbnail",  # IFD1 with JPEGInterchangeFormat/Length
        "exif-gps",
        "exif-windows-rating",  # IFD0 Rating (0x4746) and RatingPercent (0x4749)
        "exif-windows-padding",  # Windows' 0xEA1C Padding and 0xEA1D OffsetSchema
        "exif-xp-keywords",  # IFD0 XPKeywords (UTF-16LE)
        "makernote-canon",  # IFD without header, offsets from the TIFF header
        "makernote-nikon",  # "Nikon\0\2\x10\0\0" + own TIFF header
        "makernote-sony",  # "SONY DSC \0\0\0" + IFD, offsets from the TIFF header, no next-IFD link
        "makernote-olympus",  # "OLYMPUS\0II\3\0" + IFD, offsets from the maker note, Equipment sub-IFD
        "makernote-panasonic",  # "Panasonic\0\0\0" + IFD, no next-IFD link
        # other JPEG segments
        "jfif",
        "icc-profile",
        "jpeg-comment",
        "photoshop-irb",  # APP13 with image resources besides IPTC (ResolutionInfo, IPTCDigest)
        "iptc",
        "iptc-two-blocks",  # two APP13 segments, each a complete Photoshop block with IPTC
        "iptc-time-without-zone",  # TimeCreated "154444"
        # XMP
        "xmp-duplicate-exact",
        "xmp-duplicate-conflict",
        "xmp-empty-container",
        "xmp-single-quotes",  # xpacket and attributes in single quotes (Windows, GIMP 2.8)
        "xmp-rdf-about-uuid",  # rdf:about="uuid:..." (Windows; the XMP toolkit turns it into an InstanceID)
        "xmp-extended",  # standard packet + extended XMP in APP1 segments
        "xmp-extended-multi-segment",  # extended XMP over more than one segment
        "xmp-over-64k",  # more than 64 KB of XMP in all
        "xmp-near-limit",  # a standard packet of exactly 65502 bytes
        "xmp-trailing-nuls",  # NUL bytes after <?xpacket end?>
        "xmp-trailing-garbage",  # markup after <?xpacket end?>
        "xmp-bom",  # a UTF-8 BOM before the packet
        "xmp-no-wrapper",  # no <?xpacket?> processing instructions
        "xmp-no-toolkit",  # x:xmpmeta without x:xmptk
        # keywords and ratings as programs write them
        "keywords-digikam",  # digiKam:TagsList (Seq, "/")
        "keywords-lightroom",  # lr:hierarchicalSubject (Bag, "|") + dc:subject leaves and parents
        "keywords-dc-subject-only",
        "keywords-microsoft",  # MicrosoftPhoto:LastKeywordXMP
        "keywords-acdsee",  # acdsee:categories (XML in a string)
        "keywords-iptc",
        "rating-microsoft",  # MicrosoftPhoto:Rating (percent)
        "rating-rejected",
        "rating-5",
        "rating-zero",
        "unrated",
        "no-metadata",
        # other formats
        "png-itxt-xmp",
        "png-exif",
        "png-iccp",
        "webp-lossy",
        "webp-lossless",
        "webp-extended",
        "webp-exif-header",  # EXIF chunk starting "Exif\0\0" (as some writers do; the spec says not to)
    }
)


# --- TIFF / EXIF -----------------------------------------------------------------------------------------

BYTE, ASCII, SHORT, LONG, RATIONAL, UNDEFINED, SLONG, SRATIONAL, IFD = 1, 2, 3, 4, 5, 7, 9, 10, 13
_FORMAT = {BYTE: "B", SHORT: "H", LONG: "I", RATIONAL: "I", SLONG: "i", SRATIONAL: "i", IFD: "I"}


@dataclass(frozen=True)
class Tag:
    """One IFD entry. ``value``: text (ASCII), bytes (BYTE/UNDEFINED) or numbers (rationals as
    numerator, denominator pairs, flattened). ``external``: the value is stored elsewhere, at this offset
    (a maker note laid out as its own block)."""

    tag: int
    kind: int
    value: str | bytes | tuple[int, ...]
    external: int | None = None

    def raw(self, bo: ByteOrder) -> tuple[int, bytes]:
        if isinstance(self.value, str):
            data = self.value.encode("latin-1") + b"\0"
            return len(data), data
        if isinstance(self.value, bytes):
            return len(self.value), self.value
        data = struct.pack(f"{bo}{len(self.value)}{_FORMAT[self.kind]}", *self.value)
        count = len(self.value) // 2 if self.kind in (RATIONAL, SRATIONAL) else len(self.value)
        return count, data


def encode_ifd(tags: Iterable[Tag], at: int, next_ifd: int, bo: ByteOrder, *, base: int = 0) -> bytes:
    """An IFD at offset ``at`` with its values right after it; offsets are written relative to ``base``
    (0: the TIFF header; a maker note's start for Olympus)."""
    entries = sorted(tags, key=lambda t: t.tag)
    table, values = bytearray(), bytearray()
    values_at = at + 2 + 12 * len(entries) + 4
    for t in entries:
        count, data = t.raw(bo)
        if t.external is not None:
            table += struct.pack(f"{bo}HHII", t.tag, t.kind, count, t.external - base)
        elif len(data) <= 4:
            table += struct.pack(f"{bo}HHI", t.tag, t.kind, count) + data.ljust(4, b"\0")
        else:
            table += struct.pack(f"{bo}HHII", t.tag, t.kind, count, values_at + len(values) - base)
            values += data + b"\0" * (len(data) % 2)
    return (
        struct.pack(f"{bo}H", len(entries)) + bytes(table) + struct.pack(f"{bo}I", next_ifd) + bytes(values)
    )


Block = tuple[str, Callable[[dict[str, int]], bytes]]


def layout_tiff(bo: ByteOrder, blocks: Sequence[Block]) -> bytes:
    """A TIFF structure: the header, then ``blocks`` in order (the first is IFD0). Each block is built from
    the offsets of all blocks (``at[name]``), which are only known after a first, measuring pass."""
    at = {name: 0 for name, _ in blocks}
    out = bytearray()
    for _ in range(2):
        out = bytearray((b"II*\0" if bo == "<" else b"MM\0*") + struct.pack(f"{bo}I", 8))
        for name, build in blocks:
            out += b"\0" * (len(out) % 2)
            at[name] = len(out)
            out += build(at)
    return bytes(out)


def ascii_(tag: int, text: str) -> Tag:
    return Tag(tag, ASCII, text)


def short(tag: int, *values: int) -> Tag:
    return Tag(tag, SHORT, values)


def long_(tag: int, *values: int) -> Tag:
    return Tag(tag, LONG, values)


def rational(tag: int, *values: int) -> Tag:
    return Tag(tag, RATIONAL, values)


def srational(tag: int, *values: int) -> Tag:
    return Tag(tag, SRATIONAL, values)


def undefined(tag: int, data: bytes) -> Tag:
    return Tag(tag, UNDEFINED, data)


def byte_(tag: int, data: bytes) -> Tag:
    return Tag(tag, BYTE, data)


# Maker notes: each is built at its final offset, because three of the five store offsets that are not
# relative to the maker note itself (moving such a maker note without rewriting it breaks it).
MakerNote = Callable[[int, ByteOrder], bytes]


def canon_makernote(at: int, bo: ByteOrder) -> bytes:
    """Canon: a bare IFD, offsets from the TIFF header."""
    settings = [98, 2, 0, 4, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]
    settings += [0] * (49 - len(settings))
    shot = [68, 0, 160, 224, 192, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 250, 0, 0, 0, 0]
    shot += [0] * (34 - len(shot))
    tags = [
        short(0x0001, *settings),  # CanonCameraSettings (first value: its own size in bytes)
        short(0x0002, 0, 35, 36, 24),  # CanonFocalLength
        short(0x0004, *shot),  # CanonShotInfo
        ascii_(0x0006, "Canon EOS R6"),  # CanonImageType
        ascii_(0x0007, "Firmware Version 1.5.0"),  # CanonFirmwareVersion
        long_(0x0010, 0x80000453),  # CanonModelID
        ascii_(0x0095, "RF24-105mm F4 L IS USM"),  # LensModel
    ]
    return encode_ifd(tags, at, 0, bo)


def nikon_makernote_at(at: int, bo: ByteOrder) -> bytes:
    """Nikon type 3: its own TIFF header (big-endian), offsets from that header: position-independent."""
    return nikon_makernote()


def sony_makernote(at: int, bo: ByteOrder) -> bytes:
    """Sony: "SONY DSC " header, then an IFD with offsets from the TIFF header and no next-IFD link."""
    tags = [
        long_(0x0102, 2),  # Quality: fine
        long_(0x0115, 0),  # WhiteBalance: auto
        byte_(0xB000, b"\x03\x00\x00\x00"),  # FileFormat: ARW 2.3
        short(0xB001, 306),  # SonyModelID: ILCE-7M3
        ascii_(0xB020, "Standard"),  # CreativeStyle
        long_(0xB025, 1),  # DynamicRangeOptimizer: standard
    ]
    header = b"SONY DSC \0\0\0"
    return header + _without_next_link(encode_ifd(tags, at + len(header), 0, bo), len(tags), bo)


def olympus_makernote(at: int, bo: ByteOrder) -> bytes:
    """Olympus (new style): "OLYMPUS\\0" + byte order + version, an IFD whose offsets count from the maker
    note's start, and an Equipment sub-IFD (type IFD) placed after it."""
    header = b"OLYMPUS\0" + (b"II" if bo == "<" else b"MM") + struct.pack(f"{bo}H", 3)
    equipment = [
        undefined(0x0000, b"0100"),  # EquipmentVersion
        ascii_(0x0100, "S0089"),  # CameraType2
        ascii_(0x0101, "BHV212345"),  # SerialNumber
        ascii_(0x0203, "M.12-40mm F2.8"),  # LensModel
    ]

    def main(sub_at: int) -> bytes:
        return encode_ifd(
            [undefined(0x0000, b"0100"), Tag(0x2010, IFD, (sub_at - at,))], at + len(header), 0, bo, base=at
        )

    sub_at = at + len(header) + len(main(at))  # the size does not depend on the offset
    return header + main(sub_at) + encode_ifd(equipment, sub_at, 0, bo, base=at)


def panasonic_makernote(at: int, bo: ByteOrder) -> bytes:
    """Panasonic: "Panasonic" header, an IFD with offsets from the TIFF header and no next-IFD link."""
    tags = [
        short(0x0001, 2),  # ImageQuality: high
        undefined(0x0002, b"\x00\x01\x03\x00"),  # FirmwareVersion
        short(0x0003, 1),  # WhiteBalance: auto
        short(0x0007, 1),  # FocusMode: auto
        short(0x001A, 2),  # ImageStabilization
        undefined(0x0025, b"F561605180123\0\0\0"),  # InternalSerialNumber
        ascii_(0x0051, "LUMIX G VARIO 12-32/F3.5-5.6"),  # LensType
        undefined(0x8000, b"0143"),  # MakerNoteVersion
    ]
    header = b"Panasonic\0\0\0"
    return header + _without_next_link(encode_ifd(tags, at + len(header), 0, bo), len(tags), bo)


def _without_next_link(ifd: bytes, n: int, bo: ByteOrder) -> bytes:
    """An IFD as Panasonic and Sony write it in maker notes: no 4-byte next-IFD offset (the values move up;
    their offsets are adjusted)."""
    cut = 2 + 12 * n
    table, values = bytearray(ifd[:cut]), ifd[cut + 4 :]
    for i in range(n):
        entry = 2 + 12 * i
        _tag, kind, count, offset = struct.unpack_from(f"{bo}HHII", table, entry)
        size = count * {BYTE: 1, ASCII: 1, SHORT: 2, LONG: 4, RATIONAL: 8, UNDEFINED: 1}.get(kind, 4)
        if size > 4:
            struct.pack_into(f"{bo}I", table, entry + 8, offset - 4)
    return bytes(table) + values


MAKERNOTES: Final[dict[str, MakerNote]] = {
    "canon": canon_makernote,
    "nikon": nikon_makernote_at,
    "sony": sony_makernote,
    "olympus": olympus_makernote,
    "panasonic": panasonic_makernote,
}


@dataclass(frozen=True)
class Camera:
    make: str
    model: str
    byte_order: ByteOrder
    makernote: str | None = None
    lens: str | None = None
    serial: str | None = None
    software: str | None = None


CANON = Camera("Canon", "Canon EOS R6", "<", "canon", "RF24-105mm F4 L IS USM", "012345678901")
NIKON = Camera("NIKON CORPORATION", "NIKON Z 6", ">", "nikon", "NIKKOR Z 24-70mm f/4 S", "6012345")
SONY = Camera("SONY", "ILCE-7M3", "<", "sony", "FE 28-70mm F3.5-5.6 OSS")
OLYMPUS = Camera("OLYMPUS CORPORATION", "E-M1MarkII", "<", "olympus", "OLYMPUS M.12-40mm F2.8", "BHV212345")
PANASONIC = Camera("Panasonic", "DMC-GX80", "<", "panasonic", "LUMIX G VARIO 12-32/F3.5-5.6")
PIXEL = Camera("Google", "Pixel 7", "<", software="HDR+ 1.0.540104767zd")
SCANNER = Camera("EPSON", "Perfection V600", ">", software="EPSON Scan")

DATE = "2023:06:14 17:42:09"
GPS_PARIS = (
    byte_(0x0000, b"\x02\x03\x00\x00"),  # GPSVersionID
    ascii_(0x0001, "N"),
    rational(0x0002, 48, 1, 51, 1, 2397, 100),
    ascii_(0x0003, "E"),
    rational(0x0004, 2, 1, 17, 1, 4012, 100),
    byte_(0x0005, b"\x00"),  # GPSAltitudeRef: above sea level
    rational(0x0006, 3512, 100),
    rational(0x0007, 15, 1, 42, 1, 9, 1),  # GPSTimeStamp (UTC)
    ascii_(0x0012, "WGS-84"),
    ascii_(0x001D, "2023:06:14"),
)


def windows_padding(size: int = 2060) -> Tag:
    """The Padding tag (0xEA1C) Windows reserves in IFD0 and ExifIFD so later edits fit in place."""
    return undefined(0xEA1C, b"\x1c\xea" + b"\0" * (size - 2))


def exif_tiff(
    camera: Camera,
    *,
    orientation: int = 1,
    thumbnail: bytes | None = None,
    gps: bool = False,
    ifd0_extra: Sequence[Tag] = (),
    exif_extra: Sequence[Tag] = (),
    width: int = WIDTH,
    height: int = HEIGHT,
) -> bytes:
    """EXIF (a TIFF structure) as ``camera`` writes it: IFD0, ExifIFD with the maker note, InteropIFD,
    GPS IFD and IFD1 with a JPEG thumbnail, in the camera's byte order."""
    bo = camera.byte_order
    makernote = MAKERNOTES[camera.makernote] if camera.makernote else None
    blocks: list[Block] = []

    def ifd0(at: dict[str, int]) -> bytes:
        tags = [
            ascii_(0x010F, camera.make),
            ascii_(0x0110, camera.model),
            short(0x0112, orientation),
            rational(0x011A, 72, 1),
            rational(0x011B, 72, 1),
            short(0x0128, 2),
            ascii_(0x0132, DATE),
            short(0x0213, 2),  # YCbCrPositioning: co-sited
            long_(0x8769, at["exif"]),
            *ifd0_extra,
        ]
        if camera.software:
            tags.append(ascii_(0x0131, camera.software))
        if gps:
            tags.append(long_(0x8825, at["gps"]))
        return encode_ifd(tags, at["ifd0"], at["ifd1"] if thumbnail else 0, bo)

    def exif(at: dict[str, int]) -> bytes:
        tags = [
            rational(0x829A, 1, 250),  # ExposureTime
            rational(0x829D, 56, 10),  # FNumber
            short(0x8822, 3),  # ExposureProgram: aperture priority
            short(0x8827, 200),  # ISO
            undefined(0x9000, b"0231"),  # ExifVersion
            ascii_(0x9003, DATE),
            ascii_(0x9004, DATE),
            ascii_(0x9010, "+02:00"),  # OffsetTime
            ascii_(0x9011, "+02:00"),  # OffsetTimeOriginal
            undefined(0x9101, b"\x01\x02\x03\x00"),  # ComponentsConfiguration
            srational(0x9201, 7965784, 1000000),  # ShutterSpeedValue
            rational(0x9202, 4970854, 1000000),  # ApertureValue
            srational(0x9204, 0, 1),  # ExposureCompensation
            short(0x9207, 5),  # MeteringMode: multi-segment
            short(0x9209, 16),  # Flash: off, did not fire
            rational(0x920A, 350, 10),  # FocalLength
            ascii_(0x9290, "12"),  # SubSecTime
            ascii_(0x9291, "12"),  # SubSecTimeOriginal
            undefined(0xA000, b"0100"),  # FlashpixVersion
            short(0xA001, 1),  # ColorSpace: sRGB
            long_(0xA002, width),
            long_(0xA003, height),
            long_(0xA005, at["interop"]),
            short(0xA401, 0),  # CustomRendered
            short(0xA402, 0),  # ExposureMode
            short(0xA403, 0),  # WhiteBalance
            short(0xA406, 0),  # SceneCaptureType
            *exif_extra,
        ]
        if camera.serial:
            tags.append(ascii_(0xA431, camera.serial))
        if camera.lens:
            tags.append(ascii_(0xA434, camera.lens))
        if makernote is not None:
            size = len(makernote(0, bo))
            tags.append(Tag(0x927C, UNDEFINED, b"\0" * size, external=at["makernote"]))
        return encode_ifd(tags, at["exif"], 0, bo)

    blocks += [("ifd0", ifd0), ("exif", exif)]
    if makernote is not None:
        blocks.append(("makernote", lambda at: makernote(at["makernote"], bo)))
    interop = [ascii_(0x0001, "R98"), undefined(0x0002, b"0100")]
    blocks.append(("interop", lambda at: encode_ifd(interop, at["interop"], 0, bo)))
    if gps:
        blocks.append(("gps", lambda at: encode_ifd(GPS_PARIS, at["gps"], 0, bo)))
    if thumbnail is not None:
        thumb = thumbnail

        def ifd1(at: dict[str, int]) -> bytes:
            tags = [
                short(0x0103, 6),  # Compression: old-style JPEG (thumbnail)
                rational(0x011A, 72, 1),
                rational(0x011B, 72, 1),
                short(0x0128, 2),
                long_(0x0201, at["thumbnail"]),
                long_(0x0202, len(thumb)),
            ]
            return encode_ifd(tags, at["ifd1"], 0, bo)

        blocks += [("ifd1", ifd1), ("thumbnail", lambda at: thumb)]
    return layout_tiff(bo, blocks)


def exif_plain(bo: ByteOrder, tags: Sequence[Tag]) -> bytes:
    """A TIFF structure with IFD0 only, as editors write for a PNG or WebP."""
    return layout_tiff(bo, [("ifd0", lambda at: encode_ifd(tags, at["ifd0"], 0, bo))])


def xp_text(text: str) -> bytes:
    """A Windows XP* tag's value: UTF-16LE with a terminating NUL character."""
    return (text + "\0").encode("utf-16-le")


# --- IPTC in Photoshop image resources -------------------------------------------------------------------


def iptc_dataset(record: int, number: int, data: bytes | str) -> bytes:
    raw = data.encode() if isinstance(data, str) else data
    return struct.pack(">BBBH", 0x1C, record, number, len(raw)) + raw


def photoshop_resource(resource_id: int, data: bytes) -> bytes:
    """An 8BIM image resource with an empty name (a zero-length Pascal string padded to even)."""
    return (
        b"8BIM"
        + struct.pack(">H", resource_id)
        + b"\0\0"
        + struct.pack(">I", len(data))
        + data
        + (b"\0" * (len(data) % 2))
    )


def photoshop_app13(*resources: bytes) -> bytes:
    return b"Photoshop 3.0\0" + b"".join(resources)


# --- XMP -------------------------------------------------------------------------------------------------

XMP_SIGNATURE: Final = b"http://ns.adobe.com/xap/1.0/\0"
EXTENDED_SIGNATURE: Final = b"http://ns.adobe.com/xmp/extension/\0"
STANDARD_PACKET_LIMIT: Final = 65502  # the XMP specification's limit for the packet in one APP1 segment
EXTENDED_CHUNK: Final = 65400  # data per extended segment, as Adobe's writers split it
PACKET_ID: Final = "W5M0MpCehiHzreSzNTczkc9d"
ADOBE_TOOLKIT: Final = "Adobe XMP Core 9.1-c001 79.675d0f7, 2023/06/11"

NS: Final = {
    "rdf": "http://www.w3.org/1999/02/22-rdf-syntax-ns#",
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "MicrosoftPhoto": "http://ns.microsoft.com/photo/1.0/",
    "photoshop": "http://ns.adobe.com/photoshop/1.0/",
    "xmpMM": "http://ns.adobe.com/xap/1.0/mm/",
    "stEvt": "http://ns.adobe.com/xap/1.0/sType/ResourceEvent#",
    "stRef": "http://ns.adobe.com/xap/1.0/sType/ResourceRef#",
    "crs": "http://ns.adobe.com/camera-raw-settings/1.0/",
    "tiff": "http://ns.adobe.com/tiff/1.0/",
    "exif": "http://ns.adobe.com/exif/1.0/",
    "aux": "http://ns.adobe.com/exif/1.0/aux/",
    "xmpNote": "http://ns.adobe.com/xmp/note/",
    "darktable": "http://darktable.sf.net/",
    "acdsee": "http://ns.acdsee.com/iptc/1.0/",
    "mediapro": "http://ns.iview-multimedia.com/mediapro/1.0/",
    "Iptc4xmpCore": "http://iptc.org/std/Iptc4xmpCore/1.0/xmlns/",
    "iX": "http://ns.adobe.com/iX/1.0/",
}


def xmlns(*prefixes: str, quote: str = '"') -> str:
    return " ".join(f"xmlns:{p}={quote}{NS[p]}{quote}" for p in prefixes)


def xmlns_x(quote: str = '"') -> str:
    return f"xmlns:x={quote}adobe:ns:meta/{quote}"


def rdf_list(kind: Literal["Bag", "Seq"], items: Iterable[str]) -> str:
    inner = "".join(f"<rdf:li>{i}</rdf:li>" for i in items)
    return f"<rdf:{kind}>{inner}</rdf:{kind}>" if inner else f"<rdf:{kind}/>"


def xmpmeta(
    descriptions: str, *, toolkit: str | None = "Adobe XMP Core 7.0-c000 1.000000", quote: str = '"'
) -> str:
    """``x:xmpmeta`` and ``rdf:RDF`` around ``descriptions``; ``toolkit``: the writer's x:xmptk."""
    q = quote
    tk = f" x:xmptk={q}{toolkit}{q}" if toolkit else ""
    return (
        f"<x:xmpmeta xmlns:x={q}adobe:ns:meta/{q}{tk}>\n"
        f" <rdf:RDF xmlns:rdf={q}{NS['rdf']}{q}>\n{descriptions}\n </rdf:RDF>\n</x:xmpmeta>"
    )


def wrap_packet(
    meta: str,
    *,
    padding: int = 2048,
    total: int | None = None,
    quote: str = '"',
    begin: str = "\ufeff",
) -> bytes:
    """An XMP packet: the xpacket header, ``meta``, whitespace padding (in lines of 100, as Adobe writes
    it) and the writable-packet trailer. ``total``: pad to exactly this many bytes instead."""
    q = quote
    head = f"<?xpacket begin={q}{begin}{q} id={q}{PACKET_ID}{q}?>\n{meta}\n".encode()
    tail = f"<?xpacket end={q}w{q}?>".encode()
    if total is not None:
        padding = total - len(head) - len(tail)
        if padding < 0:
            raise ValueError(f"XMP content is {len(head) + len(tail)} bytes, over {total}")
    lines, rest = divmod(padding, 101)
    pad = (b" " * 100 + b"\n") * lines + b" " * rest
    return head + pad + tail


def extended_xmp(
    standard_descriptions: str, extended_meta: str, *, toolkit: str = ADOBE_TOOLKIT
) -> list[bytes]:
    """APP1 payloads for a standard packet that names the extended one (xmpNote:HasExtendedXMP = the
    MD5 of the serialised extended packet, upper-case hex) and the extended packet split into segments:
    signature, GUID, full length and offset (big-endian), data."""
    extended = extended_meta.encode()
    guid = hashlib.md5(extended).hexdigest().upper()
    note = f'  <rdf:Description rdf:about="" {xmlns("xmpNote")}\n    xmpNote:HasExtendedXMP="{guid}"/>\n'
    standard = wrap_packet(xmpmeta(note + standard_descriptions, toolkit=toolkit))
    payloads = [XMP_SIGNATURE + standard]
    for offset in range(0, len(extended), EXTENDED_CHUNK):
        chunk = extended[offset : offset + EXTENDED_CHUNK]
        header = EXTENDED_SIGNATURE + guid.encode() + struct.pack(">II", len(extended), offset)
        payloads.append(header + chunk)
    return payloads


# --- JPEG assembly ---------------------------------------------------------------------------------------

APP0, APP1, APP2, APP13, COM = 0xE0, 0xE1, 0xE2, 0xED, 0xFE


def segment(marker: int, payload: bytes) -> bytes:
    if len(payload) + 2 > 0xFFFF:
        raise ValueError(f"segment 0x{marker:02X}: {len(payload)} bytes do not fit")
    return bytes((0xFF, marker)) + struct.pack(">H", len(payload) + 2) + payload


JFIF: Final = b"JFIF\0\x01\x01\x01\x00\x48\x00\x48\x00\x00"  # 1.01, 72x72 dpi, no thumbnail


@cache
def _pixels(width: int, height: int, seed: int) -> bytes:
    return scene(width, height, seed=seed).tobytes()


def _image(width: int, height: int, seed: int) -> Image.Image:
    return Image.frombytes("RGB", (width, height), _pixels(width, height, seed))


@cache
def encoded_jpeg(width: int, height: int, seed: int, quality: int = 90) -> bytes:
    """Pillow's JPEG of the scene, without SOI and without any APPn/COM segment: DQT onwards."""
    buf = io.BytesIO()
    _image(width, height, seed).save(buf, "JPEG", quality=quality)
    data = buf.getvalue()
    pos = 2
    while data[pos] == 0xFF and (0xE0 <= data[pos + 1] <= 0xEF or data[pos + 1] == COM):
        pos += 2 + struct.unpack_from(">H", data, pos + 2)[0]
    return data[pos:]


def thumbnail_jpeg(seed: int) -> bytes:
    """A 160x120 EXIF thumbnail as cameras embed it: a bare JPEG (no JFIF segment)."""
    return b"\xff\xd8" + encoded_jpeg(160, 120, seed, 80)


def assemble_jpeg(
    seed: int,
    *,
    jfif: bool = False,
    exif: bytes | None = None,
    xmp: Sequence[bytes] = (),
    app13: Sequence[bytes] = (),
    icc: bytes | None = None,
    comment: bytes | None = None,
) -> bytes:
    """SOI, APP0 JFIF, APP1 Exif, APP1 XMP (standard, then extended), APP13 Photoshop, APP2 ICC, COM, then
    the encoded image. ``xmp`` and ``app13`` are complete segment payloads."""
    parts = [b"\xff\xd8"]
    if jfif:
        parts.append(segment(APP0, JFIF))
    if exif is not None:
        parts.append(segment(APP1, b"Exif\0\0" + exif))
    parts += [segment(APP1, p) for p in xmp]
    parts += [segment(APP13, p) for p in app13]
    if icc is not None:
        parts.append(segment(APP2, b"ICC_PROFILE\0\x01\x01" + icc))
    if comment is not None:
        parts.append(segment(COM, comment))
    parts.append(encoded_jpeg(WIDTH, HEIGHT, seed))
    return b"".join(parts)


# --- the JPEG photos -------------------------------------------------------------------------------------

Builder = Callable[[Path], CorpusPhoto]
_BUILDERS: list[Builder] = []


def _photo(build: Builder) -> Builder:
    _BUILDERS.append(build)
    return build


def _write(directory: Path, name: str, data: bytes) -> Path:
    path = directory / name
    path.write_bytes(data)
    return path


def _lightroom_description(rating: int) -> str:
    return f"""  <rdf:Description rdf:about=""
    {xmlns("xmp", "dc", "lr", "photoshop", "xmpMM", "stEvt", "crs", "aux")}
   xmp:CreatorTool="Adobe Photoshop Lightroom Classic 12.4 (Windows)"
   xmp:ModifyDate="2023-06-20T10:00:00+02:00" xmp:CreateDate="2023-06-14T17:42:09.12+02:00"
   xmp:MetadataDate="2023-06-20T10:00:00+02:00" xmp:Rating="{rating}" xmp:Label="Red"
   aux:Lens="RF24-105mm F4 L IS USM" photoshop:DateCreated="2023-06-14T17:42:09.12+02:00"
   xmpMM:DocumentID="xmp.did:1b2c3d4e-5f60-4a1b-9c2d-3e4f5a6b7c8d"
   xmpMM:InstanceID="xmp.iid:2c3d4e5f-6071-4b2c-8d3e-4f5a6b7c8d9e"
   xmpMM:OriginalDocumentID="0F4A1E6B3B5D6A7F8E9C0B1AC9D1B6AD"
   crs:Version="15.4" crs:ProcessVersion="11.0" crs:Exposure2012="+0.35" crs:HasSettings="True">
   <dc:subject>{rdf_list("Bag", [MINE, PEOPLE])}</dc:subject>
   <lr:hierarchicalSubject>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</lr:hierarchicalSubject>
   <xmpMM:History><rdf:Seq>
    <rdf:li stEvt:action="derived" stEvt:parameters="converted from image/x-canon-cr3 to image/jpeg"/>
    <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:2c3d4e5f-6071-4b2c-8d3e-4f5a6b7c8d9e"
     stEvt:when="2023-06-20T10:00:00+02:00" stEvt:softwareAgent="Adobe Photoshop Lightroom Classic 12.4"
     stEvt:changed="/"/>
   </rdf:Seq></xmpMM:History>
  </rdf:Description>"""


@_photo
def canon_lightroom(directory: Path) -> CorpusPhoto:
    exif = exif_tiff(CANON, thumbnail=thumbnail_jpeg(1), exif_extra=[short(0x8830, 2)])
    packet = wrap_packet(xmpmeta(_lightroom_description(5)))
    data = assemble_jpeg(1, exif=exif, xmp=[XMP_SIGNATURE + packet], icc=_icc())
    return CorpusPhoto(
        _write(directory, "canon_lightroom.jpg", data),
        "canon_lightroom",
        "Canon EOS R6 JPEG exported by Lightroom Classic: 5 stars, people|mine",
        5,
        [MINE],
        {
            "exif-little-endian",
            "makernote-canon",
            "exif-interop",
            "exif-thumbnail",
            "icc-profile",
            "keywords-lightroom",
            "rating-5",
        },
    )


def _iptc_blocks() -> list[bytes]:
    first = b"".join(
        [
            iptc_dataset(1, 90, b"\x1b%G"),  # CodedCharacterSet: UTF-8
            iptc_dataset(2, 0, b"\x00\x04"),  # ApplicationRecordVersion
            iptc_dataset(2, 25, MINE),  # Keywords
            iptc_dataset(2, 55, "20230614"),  # DateCreated
            iptc_dataset(2, 60, "154444"),  # TimeCreated, without the +hhmm zone the IIM asks for
            iptc_dataset(2, 80, "Jane Doe"),  # By-line
            iptc_dataset(2, 90, "Paris"),  # City
            iptc_dataset(2, 120, "Self-portrait by the Seine"),  # Caption-Abstract
        ]
    )
    second = b"".join(
        [
            iptc_dataset(2, 0, b"\x00\x04"),
            iptc_dataset(2, 80, "Agency Staff"),  # a second By-line
            iptc_dataset(2, 110, "Agence Exemple"),  # Credit
            iptc_dataset(2, 116, "(c) 2023 Agence Exemple"),  # CopyrightNotice
        ]
    )
    resolution = struct.pack(">IHHIHH", 72 << 16, 1, 1, 72 << 16, 1, 1)
    return [
        photoshop_app13(
            photoshop_resource(0x03ED, resolution),  # ResolutionInfo
            photoshop_resource(0x0404, first),
            photoshop_resource(0x0425, hashlib.md5(first).digest()),  # IPTCDigest
        ),
        photoshop_app13(photoshop_resource(0x0404, second)),
    ]


@_photo
def nikon_bridge_rejected(directory: Path) -> CorpusPhoto:
    exif = exif_tiff(NIKON, thumbnail=thumbnail_jpeg(2), gps=True)
    description = f"""  <rdf:Description rdf:about=""
    {xmlns("xmp", "dc", "photoshop", "Iptc4xmpCore")}
   xmp:Rating="-1" xmp:CreatorTool="Adobe Bridge 2023" xmp:MetadataDate="2023-06-21T09:12:00+02:00"
   photoshop:City="Paris" photoshop:Credit="Agence Exemple" photoshop:DateCreated="2023-06-14T15:44:44"
   Iptc4xmpCore:Location="Quai de Conti">
   <dc:creator>{rdf_list("Seq", ["Jane Doe"])}</dc:creator>
   <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>
   <dc:description><rdf:Alt><rdf:li xml:lang="x-default">Self-portrait by the Seine</rdf:li></rdf:Alt>
   </dc:description>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit=ADOBE_TOOLKIT))
    data = assemble_jpeg(2, exif=exif, xmp=[XMP_SIGNATURE + packet], app13=_iptc_blocks(), icc=_icc())
    return CorpusPhoto(
        _write(directory, "nikon_bridge_rejected.jpg", data),
        "nikon_bridge_rejected",
        "NIKON Z 6 JPEG with GPS, rejected (-1) in Bridge; IPTC in two APP13 blocks (an agency's credit in "
        "the second), TimeCreated without zone",
        -1,
        [MINE],
        {
            "exif-big-endian",
            "makernote-nikon",
            "exif-gps",
            "exif-thumbnail",
            "exif-interop",
            "icc-profile",
            "photoshop-irb",
            "iptc",
            "iptc-two-blocks",
            "iptc-time-without-zone",
            "keywords-iptc",
            "keywords-dc-subject-only",
            "rating-rejected",
        },
    )


@_photo
def sony_windows(directory: Path) -> CorpusPhoto:
    ifd0 = [
        short(0x4746, 4),  # Rating
        short(0x4749, 75),  # RatingPercent
        byte_(0x9C9E, xp_text(f"{PEOPLE}/{MINE}")),  # XPKeywords
        windows_padding(),
    ]
    exif = exif_tiff(
        SONY,
        thumbnail=thumbnail_jpeg(3),
        ifd0_extra=ifd0,
        exif_extra=[windows_padding(), Tag(0xEA1D, SLONG, (4126,))],  # OffsetSchema (SLONG)
    )
    # Windows' XMP: single quotes, no toolkit, each schema in its own description, element form.
    q = "'"
    about = "rdf:about='uuid:faf5bdd5-ba3d-11da-ad31-d33d75182f1b'"
    description = f"""<rdf:Description {about} {xmlns("xmp", quote=q)}>
<xmp:Rating>4</xmp:Rating></rdf:Description>
<rdf:Description {about} {xmlns("MicrosoftPhoto", quote=q)}>
<MicrosoftPhoto:Rating>75</MicrosoftPhoto:Rating></rdf:Description>
<rdf:Description {about} {xmlns("dc", quote=q)}>
<dc:subject>{rdf_list("Bag", [MINE])}</dc:subject></rdf:Description>
<rdf:Description {about} {xmlns("MicrosoftPhoto", quote=q)}>
<MicrosoftPhoto:LastKeywordXMP>{rdf_list("Bag", [f"{PEOPLE}/{MINE}"])}</MicrosoftPhoto:LastKeywordXMP>
</rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit=None, quote=q), quote=q)
    data = assemble_jpeg(3, exif=exif, xmp=[XMP_SIGNATURE + packet], icc=_icc())
    return CorpusPhoto(
        _write(directory, "sony_windows.jpg", data),
        "sony_windows",
        "Sony ILCE-7M3 JPEG rated 4 stars and tagged people/mine in Windows Photo Gallery: EXIF Rating, "
        "RatingPercent, XPKeywords and Padding, XMP in Windows' own layout",
        4,
        [MINE],
        {
            "exif-little-endian",
            "makernote-sony",
            "exif-thumbnail",
            "exif-interop",
            "exif-windows-rating",
            "exif-windows-padding",
            "exif-xp-keywords",
            "icc-profile",
            "xmp-single-quotes",
            "xmp-rdf-about-uuid",
            "xmp-no-toolkit",
            "rating-microsoft",
            "keywords-microsoft",
        },
    )


@_photo
def olympus_gimp_duplicates(directory: Path) -> CorpusPhoto:
    gimp = replace(OLYMPUS, software="GIMP 2.8.22")
    exif = exif_tiff(gimp, thumbnail=thumbnail_jpeg(4))
    # Modelled on GIMP 2.8's XMP writer: single quotes, the old toolkit string and the iX namespace, one
    # description per schema. The camera's tiff:/exif: properties were already in the packet GIMP read
    # and it wrote them again in a description of its own: same properties, same values.
    q = "'"
    description = f"""
<rdf:Description rdf:about='' {xmlns("tiff", quote=q)}>
  <tiff:Orientation>1</tiff:Orientation>
  <tiff:Make>OLYMPUS CORPORATION</tiff:Make>
</rdf:Description>
<rdf:Description rdf:about='' {xmlns("exif", quote=q)}>
  <exif:PixelXDimension>{WIDTH}</exif:PixelXDimension>
  <exif:PixelYDimension>{HEIGHT}</exif:PixelYDimension>
  <exif:ColorSpace>1</exif:ColorSpace>
</rdf:Description>
<rdf:Description rdf:about='' {xmlns("xmp", quote=q)}>
  <xmp:Rating>3</xmp:Rating>
  <xmp:CreatorTool>GIMP 2.8.22</xmp:CreatorTool>
</rdf:Description>
<rdf:Description rdf:about='' {xmlns("dc", quote=q)}>
  <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>
  <dc:format>image/jpeg</dc:format>
</rdf:Description>
<rdf:Description rdf:about='' {xmlns("tiff", quote=q)}>
  <tiff:Orientation>1</tiff:Orientation>
  <tiff:Make>OLYMPUS CORPORATION</tiff:Make>
</rdf:Description>
<rdf:Description rdf:about='' {xmlns("exif", quote=q)}>
  <exif:PixelXDimension>{WIDTH}</exif:PixelXDimension>
  <exif:PixelYDimension>{HEIGHT}</exif:PixelYDimension>
  <exif:ColorSpace>1</exif:ColorSpace>
</rdf:Description>
"""
    meta = (
        f"<x:xmpmeta {xmlns_x(q)} x:xmptk='XMP toolkit 2.9.1-13, framework 1.6'>\n"
        f"<rdf:RDF xmlns:rdf='{NS['rdf']}' xmlns:iX='{NS['iX']}'>\n{description}</rdf:RDF>\n</x:xmpmeta>"
    )
    packet = wrap_packet(meta, quote=q)
    data = assemble_jpeg(
        4, jfif=True, exif=exif, xmp=[XMP_SIGNATURE + packet], icc=_icc(), comment=b"Created with GIMP"
    )
    return CorpusPhoto(
        _write(directory, "olympus_gimp_duplicates.jpg", data),
        "olympus_gimp_duplicates",
        "OLYMPUS E-M1MarkII JPEG re-saved by GIMP 2.8: JFIF, a comment, and tiff:/exif: properties written "
        "twice with the same values",
        3,
        [MINE],
        {
            "exif-little-endian",
            "makernote-olympus",
            "exif-thumbnail",
            "exif-interop",
            "jfif",
            "jpeg-comment",
            "icc-profile",
            "xmp-single-quotes",
            "xmp-duplicate-exact",
            "keywords-dc-subject-only",
        },
        "lossless",
    )


def _digikam_keywords(*, tagslist_twice: bool = False) -> str:
    tags = f"<digiKam:TagsList>{rdf_list('Seq', [f'{PEOPLE}/{MINE}'])}</digiKam:TagsList>"
    return f"""
   {tags}{tags if tagslist_twice else ""}
   <MicrosoftPhoto:LastKeywordXMP>{rdf_list("Bag", [f"{PEOPLE}/{MINE}"])}</MicrosoftPhoto:LastKeywordXMP>
   <lr:hierarchicalSubject>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</lr:hierarchicalSubject>
   <mediapro:CatalogSets>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</mediapro:CatalogSets>
   <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>"""


DIGIKAM_NS: Final = ("xmp", "digiKam", "MicrosoftPhoto", "lr", "mediapro", "dc", "acdsee", "tiff")
ACDSEE_CATEGORIES: Final = (
    f'&lt;Categories&gt;&lt;Category Assigned="0"&gt;{PEOPLE}&lt;Category Assigned="1"&gt;{MINE}'
    "&lt;/Category&gt;&lt;/Category&gt;&lt;/Categories&gt;"
)


@_photo
def panasonic_digikam_conflict(directory: Path) -> CorpusPhoto:
    exif = exif_tiff(PANASONIC, thumbnail=thumbnail_jpeg(5))
    # Two descriptions disagree on the stars: 5 as an attribute in digiKam's, 3 as an element in one
    # merged from another program's packet. No reader can tell which the owner meant.
    description = f"""  <rdf:Description rdf:about=""
    {xmlns(*DIGIKAM_NS)}
   xmp:Rating="5" MicrosoftPhoto:Rating="99" tiff:Orientation="1">{_digikam_keywords()}
   <acdsee:categories>{ACDSEE_CATEGORIES}</acdsee:categories>
  </rdf:Description>
  <rdf:Description rdf:about="" {xmlns("xmp")}>
   <xmp:Rating>3</xmp:Rating>
   <xmp:CreatorTool>Picasa</xmp:CreatorTool>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit="XMP Core 4.4.0-Exiv2"))
    data = assemble_jpeg(5, exif=exif, xmp=[XMP_SIGNATURE + packet])
    return CorpusPhoto(
        _write(directory, "panasonic_digikam_conflict.jpg", data),
        "panasonic_digikam_conflict",
        "Panasonic DMC-GX80 JPEG tagged in digiKam, whose XMP has xmp:Rating twice with different values "
        "(5 and 3): exiftool shows the last one",
        3,
        [MINE],
        {
            "exif-little-endian",
            "makernote-panasonic",
            "exif-thumbnail",
            "exif-interop",
            "keywords-digikam",
            "keywords-lightroom",
            "keywords-microsoft",
            "keywords-acdsee",
            "rating-microsoft",
            "xmp-duplicate-conflict",
        },
        "unrepairable",
    )


@_photo
def digikam_duplicates_exact(directory: Path) -> CorpusPhoto:
    exif = exif_tiff(SCANNER)
    # digiKam-4 style: the stars and the orientation both as an attribute and as an element of the same
    # description, and the tag list written twice; every copy has the same value.
    description = f"""  <rdf:Description rdf:about=""
    {xmlns(*DIGIKAM_NS)}
   xmp:Rating="5" MicrosoftPhoto:Rating="99" tiff:Orientation="1">
   <xmp:Rating>5</xmp:Rating>
   <tiff:Orientation>1</tiff:Orientation>{_digikam_keywords(tagslist_twice=True)}
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit="XMP Core 4.4.0-Exiv2"))
    data = assemble_jpeg(6, jfif=True, exif=exif, xmp=[XMP_SIGNATURE + packet])
    return CorpusPhoto(
        _write(directory, "digikam_duplicates_exact.jpg", data),
        "digikam_duplicates_exact",
        "A film scan (EPSON, big-endian EXIF without maker note) rated 5 in digiKam 4: xmp:Rating and "
        "tiff:Orientation as attribute and element, digiKam:TagsList twice, all copies equal",
        5,
        [MINE],
        {
            "exif-big-endian",
            "exif-interop",
            "jfif",
            "keywords-digikam",
            "keywords-lightroom",
            "keywords-microsoft",
            "rating-microsoft",
            "rating-5",
            "xmp-duplicate-exact",
        },
        "lossless",
    )


def _history(count: int, agent: str) -> str:
    return "".join(
        f"""
    <rdf:li stEvt:action="saved" stEvt:instanceID="xmp.iid:{i:08x}-5f60-4a1b-9c2d-3e4f5a6b7c8d"
     stEvt:when="2023-06-{1 + i % 28:02d}T10:{i % 60:02d}:00+02:00" stEvt:softwareAgent="{agent}"
     stEvt:changed="/"/>"""
        for i in range(count)
    )


def _ancestors(count: int) -> str:
    return "".join(
        f"<rdf:li>xmp.did:{hashlib.md5(str(i).encode()).hexdigest()}</rdf:li>\n" for i in range(count)
    )


@_photo
def photoshop_extended(directory: Path) -> CorpusPhoto:
    """The classic over-64-KB case: photoshop:DocumentAncestors grown over years of placed files."""
    exif = exif_tiff(CANON, thumbnail=thumbnail_jpeg(7), ifd0_extra=[ascii_(0x0131, "Adobe Photoshop 24.7")])
    standard = f"""  <rdf:Description rdf:about=""
    {xmlns("xmp", "dc", "photoshop", "xmpMM")}
   xmp:CreatorTool="Adobe Photoshop 24.7 (Windows)" xmp:Rating="2"
   xmp:ModifyDate="2023-07-01T12:00:00+02:00" photoshop:ColorMode="3"
   xmpMM:DocumentID="adobe:docid:photoshop:5e1f4c0a-1111-2222-3333-444455556666"
   xmpMM:InstanceID="xmp.iid:0b0c0d0e-1111-2222-3333-444455556666">
   <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>
  </rdf:Description>"""
    extended = xmpmeta(
        f"""  <rdf:Description rdf:about="" {xmlns("photoshop", "xmpMM", "stEvt")}>
   <photoshop:DocumentAncestors><rdf:Bag>
{_ancestors(2400)}   </rdf:Bag></photoshop:DocumentAncestors>
   <xmpMM:History><rdf:Seq>{_history(60, "Adobe Photoshop 24.7 (Windows)")}
   </rdf:Seq></xmpMM:History>
  </rdf:Description>""",
        toolkit=ADOBE_TOOLKIT,
    )
    resolution = struct.pack(">IHHIHH", 72 << 16, 1, 1, 72 << 16, 1, 1)
    app13 = [photoshop_app13(photoshop_resource(0x03ED, resolution), photoshop_resource(0x0404, b""))]
    data = assemble_jpeg(
        7, jfif=True, exif=exif, xmp=extended_xmp(standard, extended), app13=app13, icc=_icc()
    )
    return CorpusPhoto(
        _write(directory, "photoshop_extended.jpg", data),
        "photoshop_extended",
        "Canon JPEG saved by Photoshop: 2 stars; ~140 KB of photoshop:DocumentAncestors and history in "
        "extended XMP over three APP1 segments",
        2,
        [MINE],
        {
            "exif-little-endian",
            "makernote-canon",
            "exif-thumbnail",
            "exif-interop",
            "jfif",
            "icc-profile",
            "photoshop-irb",
            "keywords-dc-subject-only",
            "xmp-extended",
            "xmp-extended-multi-segment",
            "xmp-over-64k",
        },
    )


@_photo
def camera_raw_extended(directory: Path) -> CorpusPhoto:
    exif = exif_tiff(NIKON, thumbnail=thumbnail_jpeg(8))
    standard = f"""  <rdf:Description rdf:about=""
    {xmlns("xmp", "dc", "lr", "crs")}
   xmp:CreatorTool="Adobe Photoshop Camera Raw 15.4" xmp:Rating="0" crs:Version="15.4"
   crs:ProcessVersion="11.0" crs:HasSettings="True">
   <dc:subject>{rdf_list("Bag", [MINE, PEOPLE])}</dc:subject>
   <lr:hierarchicalSubject>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</lr:hierarchicalSubject>
  </rdf:Description>"""
    curve = "".join(f"<rdf:li>{x}, {min(255, int(x * 1.1))}</rdf:li>" for x in range(0, 256, 4))
    masks = "".join(
        f'<rdf:li crs:What="Correction" crs:CorrectionAmount="1" crs:LocalExposure2012="{i / 100:+.2f}"'
        f' crs:CorrectionName="Mask {i}"'
        f' crs:CorrectionSyncID="{hashlib.md5(bytes([i])).hexdigest().upper()}"/>'
        for i in range(40)
    )
    extended = xmpmeta(
        f"""  <rdf:Description rdf:about="" {xmlns("crs", "xmpMM", "stEvt")}
   crs:Exposure2012="+0.35" crs:Contrast2012="+12" crs:Highlights2012="-45" crs:Shadows2012="+30"
   crs:Clarity2012="+10" crs:Vibrance="+15" crs:ToneCurveName2012="Custom">
   <crs:ToneCurvePV2012><rdf:Seq>{curve}</rdf:Seq></crs:ToneCurvePV2012>
   <crs:MaskGroupBasedCorrections><rdf:Seq>{masks}</rdf:Seq></crs:MaskGroupBasedCorrections>
   <xmpMM:History><rdf:Seq>{_history(12, "Adobe Photoshop Camera Raw 15.4")}
   </rdf:Seq></xmpMM:History>
  </rdf:Description>""",
        toolkit=ADOBE_TOOLKIT,
    )
    data = assemble_jpeg(8, exif=exif, xmp=extended_xmp(standard, extended), icc=_icc())
    return CorpusPhoto(
        _write(directory, "camera_raw_extended.jpg", data),
        "camera_raw_extended",
        "NIKON JPEG edited in Camera Raw: xmp:Rating 0 written explicitly; develop settings (tone curve, "
        "masks) and history in one extended XMP segment",
        0,
        [MINE],
        {
            "exif-big-endian",
            "makernote-nikon",
            "exif-thumbnail",
            "exif-interop",
            "icc-profile",
            "keywords-lightroom",
            "rating-zero",
            "xmp-extended",
        },
    )


@_photo
def darktable_near_limit(directory: Path) -> CorpusPhoto:
    exif = exif_tiff(OLYMPUS, thumbnail=thumbnail_jpeg(9))
    history = "".join(
        f"""
     <rdf:li darktable:num="{i}" darktable:operation="{op}" darktable:enabled="1" darktable:modversion="2"
      darktable:params="{hashlib.sha256(str(i).encode()).hexdigest() * 3}" darktable:multi_name=""
      darktable:multi_priority="0" darktable:blendop_version="11"
      darktable:blendop_params="gz08eJxjYGBgYAFiCQYYOOHEgAYY0QVwggZ7CB6pfNoAAGHWBBc="/>"""
        for i, op in enumerate(["exposure", "filmicrgb", "colorbalancergb", "sharpen", "lens"] * 23)
    )
    description = f"""  <rdf:Description rdf:about=""
    {xmlns("xmp", "dc", "lr", "darktable")}
   xmp:Rating="1" darktable:xmp_version="5" darktable:history_end="115" darktable:iop_order_version="4">
   <darktable:history><rdf:Seq>{history}
   </rdf:Seq></darktable:history>
   <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>
   <lr:hierarchicalSubject>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</lr:hierarchicalSubject>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit="XMP Core 4.4.0-Exiv2"), total=STANDARD_PACKET_LIMIT)
    data = assemble_jpeg(9, exif=exif, xmp=[XMP_SIGNATURE + packet])
    return CorpusPhoto(
        _write(directory, "darktable_near_limit.jpg", data),
        "darktable_near_limit",
        f"OLYMPUS JPEG exported by darktable with a long history: a standard XMP packet of exactly "
        f"{STANDARD_PACKET_LIMIT} bytes (content plus padding), 1 star",
        1,
        [MINE],
        {
            "exif-little-endian",
            "makernote-olympus",
            "exif-thumbnail",
            "exif-interop",
            "keywords-lightroom",
            "xmp-near-limit",
        },
    )


def _simple_description(rating: int | None, keywords: Sequence[str]) -> str:
    stars = f' xmp:Rating="{rating}"' if rating is not None else ""
    subject = f"\n   <dc:subject>{rdf_list('Bag', keywords)}</dc:subject>" if keywords else ""
    return f"""  <rdf:Description rdf:about="" {xmlns("xmp", "dc")}
   xmp:CreatorTool="Photo Mechanic 6"{stars}>{subject}
  </rdf:Description>"""


@_photo
def trailing_nuls(directory: Path) -> CorpusPhoto:
    packet = wrap_packet(xmpmeta(_simple_description(2, [MINE]), toolkit="Image::ExifTool 12.40"))
    exif = exif_tiff(SONY, thumbnail=thumbnail_jpeg(10))
    data = assemble_jpeg(10, exif=exif, xmp=[XMP_SIGNATURE + packet + b"\0" * 64])
    return CorpusPhoto(
        _write(directory, "trailing_nuls.jpg", data),
        "trailing_nuls",
        "Sony JPEG, 2 stars, whose XMP segment is padded with NULs after <?xpacket end?>",
        2,
        [MINE],
        {
            "exif-little-endian",
            "makernote-sony",
            "exif-thumbnail",
            "exif-interop",
            "keywords-dc-subject-only",
            "xmp-trailing-nuls",
        },
    )


@_photo
def trailing_garbage(directory: Path) -> CorpusPhoto:
    packet = wrap_packet(xmpmeta(_simple_description(4, [MINE]), toolkit="Image::ExifTool 12.40"))
    # What an in-place writer leaves when a packet shrinks: the tail of the older, longer one.
    garbage = b"\n</rdf:RDF>\n</x:xmpmeta>\n<?xpacket end='w'?>"
    exif = exif_tiff(PANASONIC, thumbnail=thumbnail_jpeg(21))
    data = assemble_jpeg(21, exif=exif, xmp=[XMP_SIGNATURE + packet + garbage])
    return CorpusPhoto(
        _write(directory, "trailing_garbage.jpg", data),
        "trailing_garbage",
        "Panasonic JPEG, 4 stars, whose XMP segment continues after <?xpacket end?> with the stale tail of "
        "an older packet",
        4,
        [MINE],
        {
            "exif-little-endian",
            "makernote-panasonic",
            "exif-thumbnail",
            "exif-interop",
            "keywords-dc-subject-only",
            "xmp-trailing-garbage",
        },
    )


@_photo
def packet_with_bom(directory: Path) -> CorpusPhoto:
    packet = wrap_packet(xmpmeta(_simple_description(4, [MINE]), toolkit="XMP Core 5.5.0"))
    data = assemble_jpeg(11, jfif=True, xmp=[XMP_SIGNATURE + b"\xef\xbb\xbf" + packet])
    return CorpusPhoto(
        _write(directory, "packet_with_bom.jpg", data),
        "packet_with_bom",
        "JPEG without EXIF, 4 stars, whose XMP segment starts with a UTF-8 byte order mark",
        4,
        [MINE],
        {"jfif", "keywords-dc-subject-only", "xmp-bom"},
    )


@_photo
def packet_without_wrapper(directory: Path) -> CorpusPhoto:
    meta = xmpmeta(_simple_description(None, [MINE]), toolkit="XMP Core 6.0.0")
    exif = exif_tiff(PIXEL, gps=True)
    data = assemble_jpeg(12, exif=exif, xmp=[XMP_SIGNATURE + meta.encode()])
    return CorpusPhoto(
        _write(directory, "packet_without_wrapper.jpg", data),
        "packet_without_wrapper",
        "Pixel 7 JPEG with GPS and no maker note, unrated, keyword in dc:subject only, XMP without the "
        "<?xpacket?> wrapper",
        None,
        [MINE],
        {
            "exif-little-endian",
            "exif-gps",
            "exif-interop",
            "keywords-dc-subject-only",
            "unrated",
            "xmp-no-wrapper",
        },
    )


@_photo
def empty_containers(directory: Path) -> CorpusPhoto:
    # Modelled on packets of Apple's photo tools (XMP Core 5.4.0): empty begin attribute, empty arrays.
    namespaces = xmlns("dc", "xmp", "photoshop", "MicrosoftPhoto", "digiKam", "lr")
    description = f"""  <rdf:Description rdf:about="" {namespaces}
   photoshop:Country="France" xmp:Rating="3" MicrosoftPhoto:Rating="50">
   <dc:creator><rdf:Seq/></dc:creator>
   <dc:subject><rdf:Bag/></dc:subject>
   <dc:rights><rdf:Alt/></dc:rights>
   <lr:hierarchicalSubject><rdf:Bag/></lr:hierarchicalSubject>
   <digiKam:TagsList><rdf:Seq/></digiKam:TagsList>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit="XMP Core 5.4.0"), begin="")
    exif = exif_tiff(CANON, thumbnail=thumbnail_jpeg(13))
    data = assemble_jpeg(13, exif=exif, xmp=[XMP_SIGNATURE + packet])
    return CorpusPhoto(
        _write(directory, "empty_containers.jpg", data),
        "empty_containers",
        "Canon JPEG, 3 stars, with empty dc:creator Seq, dc:subject Bag, dc:rights Alt, "
        "lr:hierarchicalSubject and digiKam:TagsList: no keywords at all",
        3,
        [],
        {
            "exif-little-endian",
            "makernote-canon",
            "exif-thumbnail",
            "exif-interop",
            "rating-microsoft",
            "xmp-empty-container",
        },
    )


@_photo
def no_metadata(directory: Path) -> CorpusPhoto:
    data = assemble_jpeg(14, jfif=True)
    return CorpusPhoto(
        _write(directory, "no_metadata.jpg", data),
        "no_metadata",
        "A JPEG with nothing but JFIF: unrated, no keywords",
        None,
        [],
        {"jfif", "unrated", "no-metadata"},
    )


# --- PNG -------------------------------------------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_itxt_xmp(packet: bytes) -> bytes:
    """XMP as Adobe's writers put it in PNG: an uncompressed iTXt chunk named XML:com.adobe.xmp."""
    return png_chunk(b"iTXt", b"XML:com.adobe.xmp\0\0\0\0\0" + packet)


def assemble_png(seed: int, extra: Sequence[bytes], *, icc: bytes | None = None) -> bytes:
    """Pillow's PNG of the scene with ``extra`` chunks inserted after IHDR (and iCCP, if any)."""
    buf = io.BytesIO()
    kwargs: dict[str, object] = {"icc_profile": icc} if icc else {}
    _image(WIDTH, HEIGHT, seed).save(buf, "PNG", **kwargs)
    data = buf.getvalue()
    pos, chunks = 8, []
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        chunks.append(data[pos : pos + 12 + length])
        pos += 12 + length
    head = [c for c in chunks if c[4:8] in (b"IHDR", b"iCCP")]
    rest = [c for c in chunks if c[4:8] not in (b"IHDR", b"iCCP")]
    return data[:8] + b"".join([*head, *extra, *rest])


@_photo
def png_xmp(directory: Path) -> CorpusPhoto:
    description = f"""  <rdf:Description rdf:about="" {xmlns("xmp", "dc", "lr")}
   xmp:CreatorTool="Adobe Photoshop Lightroom Classic 12.4" xmp:Rating="3">
   <dc:subject>{rdf_list("Bag", [MINE, PEOPLE])}</dc:subject>
   <lr:hierarchicalSubject>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</lr:hierarchicalSubject>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description))
    data = assemble_png(15, [png_itxt_xmp(packet)], icc=_icc())
    return CorpusPhoto(
        _write(directory, "png_xmp.png", data),
        "png_xmp",
        "PNG exported by Lightroom: 3 stars, people|mine, XMP in an iTXt chunk, an sRGB iCCP chunk",
        3,
        [MINE],
        {"png-itxt-xmp", "png-iccp", "keywords-lightroom"},
    )


@_photo
def png_exif_xmp(directory: Path) -> CorpusPhoto:
    exif = exif_plain(
        "<",
        [
            ascii_(0x010F, "Google"),
            ascii_(0x0110, "Pixel 7"),
            short(0x0112, 1),
            ascii_(0x0131, "GIMP 2.10.34"),
            ascii_(0x0132, DATE),
            short(0x4746, 1),
            short(0x4749, 1),
        ],
    )
    description = f"""  <rdf:Description rdf:about="" {xmlns("xmp", "dc", "digiKam")}
   xmp:Rating="1">
   <digiKam:TagsList>{rdf_list("Seq", [f"{PEOPLE}/{MINE}"])}</digiKam:TagsList>
   <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit="XMP Core 4.4.0-Exiv2"))
    extra = [png_chunk(b"eXIf", exif), png_itxt_xmp(packet), png_chunk(b"tEXt", b"Software\0GIMP 2.10.34")]
    data = assemble_png(16, extra)
    return CorpusPhoto(
        _write(directory, "png_exif_xmp.png", data),
        "png_exif_xmp",
        "PNG with an eXIf chunk (EXIF Rating 1) and XMP in iTXt (1 star, digiKam tags), a tEXt Software",
        1,
        [MINE],
        {"png-exif", "png-itxt-xmp", "exif-windows-rating", "keywords-digikam"},
    )


# --- WebP ------------------------------------------------------------------------------------------------


def riff_chunk(fourcc: bytes, data: bytes) -> bytes:
    return fourcc + struct.pack("<I", len(data)) + data + b"\0" * (len(data) % 2)


def _webp_image_chunk(seed: int, *, lossless: bool) -> bytes:
    buf = io.BytesIO()
    _image(WIDTH, HEIGHT, seed).save(buf, "WEBP", lossless=lossless, quality=80)
    data = buf.getvalue()
    assert data[12:16] in (b"VP8 ", b"VP8L"), data[12:16]  # a simple file: RIFF, WEBP, one image chunk
    return data[12:]


def assemble_webp(chunks: Sequence[bytes]) -> bytes:
    body = b"WEBP" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def assemble_webp_extended(seed: int, *, icc: bytes | None, exif: bytes | None, xmp: bytes | None) -> bytes:
    """VP8X (flags and canvas size), ICCP, the image, EXIF, XMP: the order the WebP container asks."""
    flags = (0x20 if icc else 0) | (0x08 if exif else 0) | (0x04 if xmp else 0)
    vp8x = struct.pack("<B3x", flags) + (WIDTH - 1).to_bytes(3, "little") + (HEIGHT - 1).to_bytes(3, "little")
    chunks = [riff_chunk(b"VP8X", vp8x)]
    if icc:
        chunks.append(riff_chunk(b"ICCP", icc))
    chunks.append(_webp_image_chunk(seed, lossless=False))
    if exif:
        chunks.append(riff_chunk(b"EXIF", exif))
    if xmp:
        chunks.append(riff_chunk(b"XMP ", xmp))
    return assemble_webp(chunks)


@_photo
def webp_lossy(directory: Path) -> CorpusPhoto:
    data = assemble_webp([_webp_image_chunk(17, lossless=False)])
    return CorpusPhoto(
        _write(directory, "webp_lossy.webp", data),
        "webp_lossy",
        "A simple lossy WebP (VP8 only): no metadata",
        None,
        [],
        {"webp-lossy", "unrated", "no-metadata"},
    )


@_photo
def webp_lossless(directory: Path) -> CorpusPhoto:
    data = assemble_webp([_webp_image_chunk(18, lossless=True)])
    return CorpusPhoto(
        _write(directory, "webp_lossless.webp", data),
        "webp_lossless",
        "A simple lossless WebP (VP8L only): no metadata",
        None,
        [],
        {"webp-lossless", "unrated", "no-metadata"},
    )


def _webp_exif() -> bytes:
    return exif_plain(
        "<",
        [
            ascii_(0x010F, "Canon"),
            ascii_(0x0110, "Canon EOS R6"),
            short(0x0112, 1),
            ascii_(0x0132, DATE),
        ],
    )


@_photo
def webp_extended(directory: Path) -> CorpusPhoto:
    description = f"""  <rdf:Description rdf:about="" {xmlns("xmp", "dc", "digiKam", "lr")}
   xmp:Rating="5">
   <digiKam:TagsList>{rdf_list("Seq", [f"{PEOPLE}/{MINE}"])}</digiKam:TagsList>
   <lr:hierarchicalSubject>{rdf_list("Bag", [f"{PEOPLE}|{MINE}"])}</lr:hierarchicalSubject>
   <dc:subject>{rdf_list("Bag", [MINE])}</dc:subject>
  </rdf:Description>"""
    packet = wrap_packet(xmpmeta(description, toolkit="XMP Core 4.4.0-Exiv2"))
    data = assemble_webp_extended(19, icc=_icc(), exif=_webp_exif(), xmp=packet)
    return CorpusPhoto(
        _write(directory, "webp_extended.webp", data),
        "webp_extended",
        "An extended WebP (VP8X) with ICCP, EXIF and XMP chunks: 5 stars, digiKam and Lightroom tags",
        5,
        [MINE],
        {"webp-extended", "keywords-digikam", "keywords-lightroom", "rating-5"},
    )


@_photo
def webp_exif_header(directory: Path) -> CorpusPhoto:
    packet = wrap_packet(xmpmeta(_simple_description(None, [MINE])))
    data = assemble_webp_extended(20, icc=None, exif=b"Exif\0\0" + _webp_exif(), xmp=packet)
    return CorpusPhoto(
        _write(directory, "webp_exif_header.webp", data),
        "webp_exif_header",
        "An extended WebP whose EXIF chunk starts with the JPEG-style 'Exif\\0\\0' header; unrated",
        None,
        [MINE],
        {"webp-extended", "webp-exif-header", "keywords-dc-subject-only", "unrated"},
    )


@cache
def _icc() -> bytes:
    return srgb_icc()


# --- the corpus ------------------------------------------------------------------------------------------


def build_corpus(directory: Path) -> list[CorpusPhoto]:
    """Write every corpus photo into ``directory`` (which must exist) and describe each."""
    return [build(directory) for build in _BUILDERS]


def build_photo(directory: Path, name: str) -> CorpusPhoto:
    """Write one corpus photo by name (its builder's function name)."""
    for build in _BUILDERS:
        if build.__name__ == name:
            return build(directory)
    raise KeyError(name)


def photo_names() -> list[str]:
    return [build.__name__ for build in _BUILDERS]


# --- reading back ----------------------------------------------------------------------------------------


def embedded_xmp(path: Path) -> list[bytes]:
    """The XMP stored in a corpus file, as stored: for JPEG the standard packet's segment payload (after the
    signature) then each extended segment's data; for PNG the iTXt text; for WebP the XMP chunk."""
    data = path.read_bytes()
    if data.startswith(b"\xff\xd8"):
        out, pos = [], 2
        while data[pos] == 0xFF and data[pos + 1] not in (0xDA, 0xD9):
            (size,) = struct.unpack_from(">H", data, pos + 2)
            payload = data[pos + 4 : pos + 2 + size]
            if data[pos + 1] == APP1 and payload.startswith(XMP_SIGNATURE):
                out.append(payload[len(XMP_SIGNATURE) :])
            elif data[pos + 1] == APP1 and payload.startswith(EXTENDED_SIGNATURE):
                out.append(payload[len(EXTENDED_SIGNATURE) + 40 :])
            pos += 2 + size
        return out
    if data.startswith(b"\x89PNG"):
        out, pos = [], 8
        while pos < len(data):
            (size,) = struct.unpack_from(">I", data, pos)
            kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + size]
            if kind == b"iTXt" and body.startswith(b"XML:com.adobe.xmp\0"):
                out.append(body[len(b"XML:com.adobe.xmp\0\0\0\0\0") :])
            pos += 12 + size
        return out
    return [body for fourcc, body in riff_chunks(data) if fourcc == b"XMP "]


def riff_chunks(data: bytes) -> list[tuple[bytes, bytes]]:
    """The chunks of a RIFF/WEBP file: (FourCC, data) in file order."""
    out, pos = [], 12
    while pos + 8 <= len(data):
        fourcc, (size,) = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)
        out.append((fourcc, data[pos + 8 : pos + 8 + size]))
        pos += 8 + size + size % 2
    return out


# --- comparing metadata with exiftool --------------------------------------------------------------------

# exiftool flags: every tag (-a duplicates, -U unknown tags, RequestAll=3 also those exiftool extracts only
# when asked, such as Windows' Padding), family-1 groups with copy numbers (-G1:4, so duplicates and two
# IPTC blocks stay apart), numbers as stored (-n), binary values in full (-b: base64 in JSON, hashed below),
# and -m: without it exiftool stops lists at 1000 items (photoshop:DocumentAncestors has more). -m also
# hides exiftool's warnings, so they come from a second run without it, with -validate's structural
# checks (IFD order, required tags, offsets).
EXIFTOOL_ARGS: Final = ("-j", "-a", "-U", "-api", "RequestAll=3", "-G1:4", "-s", "-n", "-b", "-m")
WARNING_ARGS: Final = ("-j", "-a", "-G1:4", "-s", "-validate", "-warning", "-error")
VOLATILE: Final = frozenset({"SourceFile"})
WARNINGS: Final = "ExifTool:Warning"
ERRORS: Final = "ExifTool:Error"
# The file system's tags (name, size, dates, permissions, inode), composite tags (derived from the others)
# and exiftool's own (version, time, processing time; its warnings come from the second run).
VOLATILE_GROUPS: Final = ("System:", "Composite:", "ExifTool:")

# What a musiqd write may change, as exiftool names it (family-1 group : tag name):
OWN_PREFIXES: Final = ("XMP-musiqd:",)
MAY_WRITE: Final = frozenset(
    {
        "XMP-xmp:Rating",
        "XMP-microsoft:RatingPercent",  # MicrosoftPhoto:Rating
        "IFD0:Rating",
        "IFD0:RatingPercent",
        "XMP-dc:Subject",
        "XMP-lr:HierarchicalSubject",
        "XMP-digiKam:TagsList",
        "XMP-microsoft:LastKeywordXMP",
        "XMP-xmpNote:HasExtendedXMP",  # a rewritten standard packet names a new extended one
        "XMP-x:XMPToolkit",  # every XMP serialiser writes its own name
    }
)
# Positions: they move when a block before them grows, the data they point to stays the same.
MAY_MOVE: Final = frozenset({"IFD1:ThumbnailOffset", "IFD0:StripOffsets"})
# exiftool's warnings about what musiqd may write: the EXIF rating mirrors are Windows' own tags, and
# MicrosoftPhoto:Rating is written with the namespace URI Windows uses (exiftool's lacks the final slash).
MAY_WARN: Final = (
    r"^\[minor\] Non-standard IFD0 tag 0x474[69] Rating(Percent)?$",
    r"^\[minor\] Fixed incorrect URI for xmlns:MicrosoftPhoto$",
)


class _Absent:
    def __repr__(self) -> str:
        return "<absent>"


ABSENT: Final = _Absent()


def _exiftool_json(args: Sequence[str], paths: Sequence[Path]) -> list[dict[str, object]]:
    done = subprocess.run(["exiftool", *args, *map(str, paths)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"exiftool {' '.join(args)}: {done.stderr.strip()}")
    result: list[dict[str, object]] = json.loads(done.stdout)
    return result


def exiftool_snapshots(paths: Sequence[Path]) -> list[dict[str, object]]:
    """:func:`exiftool_snapshot` of several files with two exiftool runs in all."""
    tags = _exiftool_json(EXIFTOOL_ARGS, paths)
    warnings = _exiftool_json(WARNING_ARGS, paths)
    out = []
    for found, checked in zip(tags, warnings, strict=True):
        copies: dict[str, list[tuple[int, object]]] = {}
        for key, value in found.items():
            if key in VOLATILE or key.startswith(VOLATILE_GROUPS):
                continue
            group, *copy, tag = key.split(":")
            number = int(copy[0].removeprefix("Copy")) if copy else 0
            copies.setdefault(f"{group}:{tag}", []).append((number, _hash_binary(value)))
        snapshot: dict[str, object] = {}
        for base, found_copies in copies.items():
            # exiftool's own key (no copy number) is the value it gives priority; the copies follow
            for i, (_, value) in enumerate(sorted(found_copies, key=lambda c: c[0])):
                snapshot[base if i == 0 else f"{base}#{i + 1}"] = value
        snapshot[WARNINGS] = [str(v) for k, v in checked.items() if k.endswith(":Warning")]
        snapshot[ERRORS] = [str(v) for k, v in checked.items() if k.endswith(":Error")]
        out.append(snapshot)
    return out


def exiftool_snapshot(path: Path) -> dict[str, object]:
    """Every tag exiftool reads in ``path``, keyed ``Group:Tag`` (family-1 group; the value exiftool gives
    priority, e.g. the last of duplicate XMP properties) and ``Group:Tag#2``, ``#3`` for further copies in
    the same group (in exiftool's copy order), numbers as stored, binary values as
    ``sha256:<hex>``, without the file system's tags (name, size, dates, permissions) and composite tags.
    :data:`WARNINGS` and :data:`ERRORS` list exiftool's warnings (with ``-validate``) and errors in order,
    empty when there are none."""
    (snapshot,) = exiftool_snapshots([path])
    return snapshot


def _hash_binary(value: object) -> object:
    if isinstance(value, str) and value.startswith("base64:"):
        return "sha256:" + hashlib.sha256(base64.b64decode(value[7:])).hexdigest()
    if isinstance(value, list):
        return [_hash_binary(v) for v in value]
    if isinstance(value, dict):
        return {k: _hash_binary(v) for k, v in value.items()}
    return value


def foreign_diff(
    before: Mapping[str, object],
    after: Mapping[str, object],
    *,
    own_prefixes: Sequence[str] = OWN_PREFIXES,
    allowed: Iterable[str] = MAY_WRITE | MAY_MOVE,
    allowed_warnings: Iterable[str] = MAY_WARN,
) -> dict[str, tuple[object, object]]:
    """Tags (of :func:`exiftool_snapshot`) that changed, appeared or disappeared, as ``(before, after)``
    with :data:`ABSENT` for a missing side, except those under ``own_prefixes`` and the ``allowed`` tags
    (and their further copies, ``Tag#2``...). exiftool's warnings count as one tag, compared as sorted
    lists without those matching an ``allowed_warnings`` pattern."""
    allowed = frozenset(allowed)
    patterns = [re.compile(p) for p in allowed_warnings]

    def comparable(snapshot: Mapping[str, object], key: str) -> object:
        value = snapshot.get(key, ABSENT)
        if key == WARNINGS and isinstance(value, list):
            return sorted(str(w) for w in value if not any(p.search(str(w)) for p in patterns))
        return value

    diff: dict[str, tuple[object, object]] = {}
    for key in sorted(before.keys() | after.keys()):
        base = key.split("#", 1)[0]
        if base in allowed or base.startswith(tuple(own_prefixes)):
            continue
        old, new = comparable(before, key), comparable(after, key)
        if old != new:
            diff[key] = (old, new)
    return diff
