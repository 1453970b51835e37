"""The metadata corpus itself: every photo has the shapes it claims, as independent readers see them.

exiftool is the oracle for what a photo carries (ratings, keywords, maker notes, IPTC blocks, extended XMP);
the exiv2 library shows which shapes the XMP toolkit rejects (duplicate properties, markup after the
packet) and what it does not see (a second IPTC block, extended XMP).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import struct
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import exiv2
import metadata_corpus as corpus
import numpy as np
import pytest
from metadata_corpus import ABSENT, ERRORS, WARNINGS, CorpusPhoto
from PIL import Image

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")

NAMES = corpus.photo_names()
STARS_OF_PERCENT = {1: 1, 25: 2, 50: 3, 75: 4, 99: 5}

# Containers of keywords as exiftool names them: flat ones, and hierarchical ones with their separator.
FLAT_KEYWORDS = ("XMP-dc:Subject", "IPTC:Keywords")
HIERARCHICAL_KEYWORDS = {
    "XMP-lr:HierarchicalSubject": "|",
    "XMP-digiKam:TagsList": "/",
    "XMP-microsoft:LastKeywordXMP": "/",
    "XMP-mediapro:CatalogSets": "|",
    "IFD0:XPKeywords": "/",
}
KEYWORD_SHAPES = {
    "keywords-digikam": "XMP-digiKam:TagsList",
    "keywords-lightroom": "XMP-lr:HierarchicalSubject",
    "keywords-microsoft": "XMP-microsoft:LastKeywordXMP",
    "keywords-iptc": "IPTC:Keywords",
    "exif-xp-keywords": "IFD0:XPKeywords",
}

# exiftool's warnings (with -validate) that each shape causes: a photo shows each of its shapes' warnings,
# and no other.
SHAPE_WARNINGS = {
    "xmp-duplicate-exact": r"^Duplicate XMP property: ",
    "xmp-duplicate-conflict": r"^Duplicate XMP property: xmp:Rating$",
    "xmp-empty-container": r"^\[minor\] Ignored empty rdf:(Seq|Bag|Alt) list for ",
    "iptc-time-without-zone": r"^\[minor\] IPTC TimeCreated too short \(6 bytes; should be 11\)$",
    "iptc-two-blocks": r"^\[minor\] Non-standard IPTC at JPEG-APP13-Photoshop-IPTC$",
    "xmp-bom": r"^Superfluous BOM at start of XMP$",
    "xmp-no-wrapper": r"^\[minor\] XMP is missing xpacket wrapper$",
    "xmp-over-64k": r"^\[Minor\] Extracted only 1000 photoshop:DocumentAncestors items",
    "webp-exif-header": r"^\[minor\] Improper EXIF header$",
    "exif-windows-rating": r"^\[minor\] Non-standard IFD0 tag 0x474[69] Rating(Percent)?$",
    "exif-windows-padding": r"^\[minor\] Non-standard (IFD0|ExifIFD) tag 0xea1[cd] (Padding|OffsetSchema)$",
    # exiftool's name for the namespace lacks the trailing slash that Windows (and exiv2) write
    "rating-microsoft": r"^\[minor\] Fixed incorrect URI for xmlns:MicrosoftPhoto$",
    "keywords-microsoft": r"^\[minor\] Fixed incorrect URI for xmlns:MicrosoftPhoto$",
}

# One value of each maker note, as exiftool and the exiv2 library name it.
MAKER_NOTES = {
    "makernote-canon": ("Canon:CanonImageType", "Exif.Canon.ImageType", "Canon EOS R6"),
    "makernote-nikon": ("Nikon:Quality", "Exif.Nikon3.Quality", "FINE"),
    "makernote-sony": ("Sony:CreativeStyle", "Exif.Sony1.CreativeStyle", "Standard"),
    "makernote-olympus": ("Olympus:SerialNumber", "Exif.OlympusEq.SerialNumber", "BHV212345"),
    "makernote-panasonic": ("Panasonic:LensType", "Exif.Panasonic.LensType", "LUMIX G VARIO 12-32/F3.5-5.6"),
}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, CorpusPhoto]:
    root = tmp_path_factory.mktemp("corpus")
    return {p.name: p for p in corpus.build_corpus(root)}


@pytest.fixture(scope="module")
def snapshots(photos: dict[str, CorpusPhoto]) -> dict[str, dict[str, object]]:
    found = corpus.exiftool_snapshots([p.path for p in photos.values()])
    return dict(zip(photos, found, strict=True))


def with_shape(photos: dict[str, CorpusPhoto], *shapes: str) -> list[CorpusPhoto]:
    """The photos that have any of ``shapes`` (never none: each shape is in some photo)."""
    found = [p for p in photos.values() if p.shapes & set(shapes)]
    assert found, shapes
    return found


def values(snapshot: dict[str, object], key: str) -> list[str]:
    """A tag's values as non-empty strings (exiftool gives one item as a scalar, an empty container as "")."""
    value = snapshot.get(key, [])
    items = value if isinstance(value, list) else [value]
    return [str(v) for v in items if str(v) != ""]


class Exiv2Log(logging.Handler):
    """The exiv2 library's messages (python-exiv2 passes them to the "exiv2" logger)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().strip())


def exiv2_read(path: Path) -> tuple[Any, list[str]]:
    """The exiv2 image of ``path``, its metadata read, and what the library logged meanwhile (warnings
    and errors, whatever level other code left the library and its logger at)."""
    handler, logger = Exiv2Log(), logging.getLogger("exiv2")
    saved = exiv2.LogMsg.level(), exiv2.LogMsg.handler(), logger.level
    exiv2.LogMsg.setHandler(exiv2.pythonHandler)
    exiv2.LogMsg.setLevel(exiv2.LogMsg.Level.warn)
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        image = exiv2.ImageFactory.open(str(path))
        image.readMetadata()
    finally:
        logger.removeHandler(handler)
        exiv2.LogMsg.setLevel(saved[0])
        exiv2.LogMsg.setHandler(saved[1])
        logger.setLevel(saved[2])
    return image, handler.messages


def exiv2_values(data: Any, prefix: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for datum in data:
        if datum.key().startswith(prefix):
            out.setdefault(datum.key(), []).append(str(datum.toString()).rstrip())
    return out


# --- the corpus as a whole -------------------------------------------------------------------------------


def test_generation_is_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = corpus.build_corpus(tmp_path / "a")
    second = corpus.build_corpus(tmp_path / "b")
    assert [p.path.read_bytes() for p in first] == [p.path.read_bytes() for p in second]
    assert (
        corpus.build_photo(tmp_path, "sony_windows").path.read_bytes()
        == first[NAMES.index("sony_windows")].path.read_bytes()
    )


def test_every_shape_is_in_some_photo(photos: dict[str, CorpusPhoto]) -> None:
    assert set().union(*(p.shapes for p in photos.values())) == corpus.SHAPES
    assert list(photos) == NAMES  # unique names, in build order
    for name, photo in photos.items():
        assert photo.path.stem == name
        assert photo.owner_rating in (None, -1, 0, 1, 2, 3, 4, 5)
        assert photo.expect_xmp_repair in (None, "lossless", "unrepairable")
        assert photo.expect_xmp_repair == (
            "lossless"
            if "xmp-duplicate-exact" in photo.shapes
            else "unrepairable"
            if "xmp-duplicate-conflict" in photo.shapes
            else None
        )


@pytest.mark.parametrize("name", NAMES)
def test_pillow_decodes_the_pixels(name: str, photos: dict[str, CorpusPhoto]) -> None:
    with Image.open(photos[name].path) as img:
        img.load()
        assert img.size == (corpus.WIDTH, corpus.HEIGHT)
        pixels = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert pixels.std() > 20.0  # the scene, not a flat or broken image


@pytest.mark.parametrize("name", NAMES)
def test_exiftool_reads_without_errors_and_warns_only_about_the_shapes(
    name: str, photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    photo, snapshot = photos[name], snapshots[name]
    assert snapshot[ERRORS] == []
    warnings = values(snapshot, WARNINGS)
    patterns = {SHAPE_WARNINGS[s] for s in photo.shapes if s in SHAPE_WARNINGS}
    for pattern in patterns:
        assert any(re.search(pattern, w) for w in warnings), f"no warning {pattern!r} in {warnings}"
    assert [w for w in warnings if not any(re.search(p, w) for p in patterns)] == []


# --- what the owner put in each photo --------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_exiftool_reads_the_owners_rating(
    name: str, photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    photo, snapshot = photos[name], snapshots[name]
    assert snapshot.get("XMP-xmp:Rating") == photo.owner_rating
    mirrors = {
        key: STARS_OF_PERCENT.get(int(str(snapshot[key]))) if "Percent" in key else snapshot[key]
        for key in ("IFD0:Rating", "IFD0:RatingPercent", "XMP-microsoft:RatingPercent")
        if key in snapshot
    }
    if photo.expect_xmp_repair == "unrepairable":
        # digiKam's description says 5 stars (MicrosoftPhoto 99 %), the other 3: exiftool gives the last one
        # priority and lists the first as a copy
        assert mirrors == {"XMP-microsoft:RatingPercent": 5}
        assert snapshot["XMP-xmp:Rating#2"] == 5
    else:
        assert all(stars == photo.owner_rating for stars in mirrors.values()), mirrors
    assert ("exif-windows-rating" in photo.shapes) == ("IFD0:Rating" in snapshot)
    assert ("rating-microsoft" in photo.shapes) == ("XMP-microsoft:RatingPercent" in snapshot)
    assert ("rating-rejected" in photo.shapes) == (photo.owner_rating == -1)
    assert ("rating-5" in photo.shapes) == (photo.owner_rating == 5)
    assert ("rating-zero" in photo.shapes) == (photo.owner_rating == 0)
    assert ("unrated" in photo.shapes) == (photo.owner_rating is None)


@pytest.mark.parametrize("name", NAMES)
def test_exiftool_reads_the_owners_keywords_in_every_container(
    name: str, photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    photo, snapshot = photos[name], snapshots[name]
    owner = set(photo.owner_keywords)
    assert len(owner) == len(photo.owner_keywords)
    parents: set[str] = set()
    found: dict[str, set[str]] = {}
    for key, separator in HIERARCHICAL_KEYWORDS.items():
        paths = [p for v in values(snapshot, key) for p in v.split(";")]  # XPKeywords: "a;b"
        if paths:
            found[key] = {p.split(separator)[-1] for p in paths}
            parents |= {part for p in paths for part in p.split(separator)[:-1]}
    for key in FLAT_KEYWORDS:
        if values(snapshot, key):
            # Lightroom also lists a keyword's parents in dc:subject: they are not keywords of their own
            found[key] = set(values(snapshot, key)) - parents
    assert bool(found) == bool(owner), found
    assert all(keywords == owner for keywords in found.values()), found
    for shape, key in KEYWORD_SHAPES.items():
        assert (shape in photo.shapes) == (key in found), shape
    if "keywords-dc-subject-only" in photo.shapes:
        assert set(found) <= {"XMP-dc:Subject", "IPTC:Keywords"}
    if "keywords-acdsee" in photo.shapes:
        assert f'Assigned="1">{corpus.MINE}<' in values(snapshot, "XMP-acdsee:Categories")[0]


@pytest.mark.parametrize("name", NAMES)
def test_exiv2_reads_the_same_stars_unless_it_rejects_the_xmp(
    name: str, photos: dict[str, CorpusPhoto]
) -> None:
    photo = photos[name]
    image, messages = exiv2_read(photo.path)
    if photo.expect_xmp_repair or "xmp-trailing-garbage" in photo.shapes:
        assert image.xmpData().empty()
        assert str(image.xmpPacket())  # the packet is there, unparsed
        return
    expected = {} if photo.owner_rating is None else {"Xmp.xmp.Rating": [str(photo.owner_rating)]}
    assert exiv2_values(image.xmpData(), "Xmp.xmp.Rating") == expected
    assert messages == []


# --- EXIF ------------------------------------------------------------------------------------------------


def test_maker_notes_are_read_by_exiftool_and_exiv2(
    photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    for shape, (tag, key, value) in MAKER_NOTES.items():
        for photo in with_shape(photos, shape):
            assert str(snapshots[photo.name].get(tag)).rstrip() == value, (photo.name, tag)
            image, _ = exiv2_read(photo.path)
            assert exiv2_values(image.exifData(), key) == {key: [value]}, photo.name
    # Panasonic's and Sony's IFDs have no next-IFD link: the first out-of-line value follows the entries
    for shape, header, first_value in (
        ("makernote-panasonic", b"Panasonic\0\0\0", b"F561605180123"),
        ("makernote-sony", b"SONY DSC \0\0\0", b"Standard\0"),
    ):
        for photo in with_shape(photos, shape):
            data = photo.path.read_bytes()
            at = data.index(header) + len(header)
            (entries,) = struct.unpack_from("<H", data, at)
            assert data[at + 2 + 12 * entries :].startswith(first_value), photo.name


def test_exif_byte_order_thumbnail_interop_and_gps(
    photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]], tmp_path: Path
) -> None:
    for photo in photos.values():
        snapshot = snapshots[photo.name]
        big, little = "exif-big-endian" in photo.shapes, "exif-little-endian" in photo.shapes
        assert not (big and little)
        if big or little:
            assert snapshot["File:ExifByteOrder"] == ("MM" if big else "II"), photo.name
            assert snapshot["ExifIFD:DateTimeOriginal"] == corpus.DATE
        assert ("exif-interop" in photo.shapes) == ("InteropIFD:InteropIndex" in snapshot), photo.name
        assert ("exif-gps" in photo.shapes) == ("GPS:GPSLatitude" in snapshot), photo.name
        assert ("exif-thumbnail" in photo.shapes) == ("IFD1:ThumbnailImage" in snapshot), photo.name
    for photo in with_shape(photos, "exif-gps"):
        assert snapshots[photo.name]["GPS:GPSLatitude"] == pytest.approx(48.85666, abs=1e-4)
        assert snapshots[photo.name]["GPS:GPSLongitude"] == pytest.approx(2.2945, abs=1e-4)
    for photo in with_shape(photos, "exif-thumbnail"):
        thumb = subprocess.run(
            ["exiftool", "-b", "-ThumbnailImage", str(photo.path)], capture_output=True, check=True
        )
        (tmp_path / "thumb.jpg").write_bytes(thumb.stdout)
        with Image.open(tmp_path / "thumb.jpg") as img:
            assert (img.format, img.size) == ("JPEG", (160, 120)), photo.name


def test_windows_tags(photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]) -> None:
    for photo in with_shape(photos, "exif-windows-padding"):
        snapshot = snapshots[photo.name]
        assert str(snapshot["IFD0:Padding"]).startswith("sha256:")
        assert snapshot["ExifIFD:OffsetSchema"] == 4126
    for photo in with_shape(photos, "xmp-rdf-about-uuid"):
        assert str(snapshots[photo.name]["XMP-rdf:About"]).startswith("uuid:")


# --- IPTC ------------------------------------------------------------------------------------------------


def test_two_iptc_blocks_exiftool_reads_both_exiv2_the_first(
    photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    for photo in with_shape(photos, "iptc-two-blocks"):
        snapshot = snapshots[photo.name]
        # exiftool names the second block's group IPTC2
        assert snapshot["IPTC:By-line"] == "Jane Doe"
        assert snapshot["IPTC2:By-line"] == "Agency Staff"
        assert snapshot["IPTC2:Credit"] == "Agence Exemple"
        assert "IPTC:Credit" not in snapshot
        assert snapshot["Photoshop:IPTCDigest"] == snapshot["File:CurrentIPTCDigest"]  # of the first block
        image, messages = exiv2_read(photo.path)
        iptc = exiv2_values(image.iptcData(), "Iptc.Application2.")
        assert iptc["Iptc.Application2.Byline"] == ["Jane Doe"]
        assert "Iptc.Application2.Credit" not in iptc
        assert messages == []
    for photo in with_shape(photos, "iptc-time-without-zone"):
        assert snapshots[photo.name]["IPTC:TimeCreated"] == "15:44:44"  # no zone
        image, _ = exiv2_read(photo.path)
        # exiv2 reads it as UTC: a write through exiv2 re-encodes it as 154444+0000
        assert exiv2_values(image.iptcData(), "Iptc.Application2.TimeCreated") == {
            "Iptc.Application2.TimeCreated": ["15:44:44+00:00"]
        }


# --- XMP -------------------------------------------------------------------------------------------------


def xmp_properties(packet: bytes) -> dict[str, list[str]]:
    """Every top-level property of a packet (attribute or element form, in every rdf:Description) with
    each value it is given: simple values as text, containers and structures canonicalised."""
    start, end = packet.find(b"<x:xmpmeta"), packet.find(b"</x:xmpmeta>")
    root = ET.fromstring(packet[start : end + len(b"</x:xmpmeta>")])
    rdf = "{http://www.w3.org/1999/02/22-rdf-syntax-ns#}"
    found: dict[str, list[str]] = {}
    rdf_root = root.find(f"{rdf}RDF")
    assert rdf_root is not None
    for description in rdf_root:  # top-level descriptions only: nested ones are structure values
        for attr, value in description.attrib.items():
            if not attr.startswith(rdf):
                found.setdefault(attr, []).append(value)
        for child in description:
            if len(child) == 0 and not child.attrib:
                value = (child.text or "").strip()
            else:
                value = ET.canonicalize(ET.tostring(child, encoding="unicode"), strip_text=True)
                value = value[value.index(">") + 1 :]  # the element's own tag (with prefixes) aside
            found.setdefault(child.tag, []).append(value)
    return found


@pytest.mark.parametrize("name", NAMES)
def test_duplicate_properties_are_what_the_repair_label_says(
    name: str, photos: dict[str, CorpusPhoto]
) -> None:
    photo = photos[name]
    packets = corpus.embedded_xmp(photo.path)
    if "xmp-extended" in photo.shapes:
        packets = [packets[0], b"".join(packets[1:])]
    duplicates = {
        key: found for packet in packets for key, found in xmp_properties(packet).items() if len(found) > 1
    }
    if photo.expect_xmp_repair is None:
        assert duplicates == {}
    elif photo.expect_xmp_repair == "lossless":
        assert duplicates
        assert all(len(set(found)) == 1 for found in duplicates.values()), duplicates
    else:
        assert any(len(set(found)) > 1 for found in duplicates.values()), duplicates


def test_duplicate_properties_are_rejected_by_exiv2(photos: dict[str, CorpusPhoto]) -> None:
    for photo in with_shape(photos, "xmp-duplicate-exact", "xmp-duplicate-conflict"):
        image, messages = exiv2_read(photo.path)
        assert image.xmpData().empty(), photo.name
        assert "XMP Toolkit error 203: Duplicate property or field node" in messages, messages
        assert str(image.xmpPacket()).count("Rating") >= 2  # the packet is kept as it is


def test_markup_after_the_packet_is_rejected_by_exiv2_nul_bytes_are_not(
    photos: dict[str, CorpusPhoto],
) -> None:
    for photo in with_shape(photos, "xmp-trailing-garbage"):
        image, messages = exiv2_read(photo.path)
        assert image.xmpData().empty()
        assert "XMP Toolkit error 201: Error in XMLValidator" in messages
    for photo in with_shape(photos, "xmp-trailing-nuls", "xmp-bom", "xmp-no-wrapper", "xmp-empty-container"):
        image, messages = exiv2_read(photo.path)
        assert not image.xmpData().empty(), photo.name
        assert messages == [], photo.name


def test_empty_containers_are_there(
    photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    for photo in with_shape(photos, "xmp-empty-container"):
        snapshot = snapshots[photo.name]
        for key in ("XMP-dc:Creator", "XMP-dc:Subject", "XMP-dc:Rights", "XMP-lr:HierarchicalSubject"):
            assert snapshot[key] == "", key  # exiftool shows an empty container as ""
        image, _ = exiv2_read(photo.path)
        assert exiv2_values(image.xmpData(), "Xmp.dc.subject") == {"Xmp.dc.subject": [""]}


def test_extended_xmp_is_read_by_exiftool_not_by_exiv2(
    photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]
) -> None:
    only_in_extended = {
        "photoshop_extended": ("XMP-photoshop:DocumentAncestors", "Xmp.photoshop.DocumentAncestors"),
        "camera_raw_extended": ("XMP-crs:ToneCurvePV2012", "Xmp.crs.ToneCurvePV2012"),
    }
    for photo in with_shape(photos, "xmp-extended"):
        tag, key = only_in_extended[photo.name]
        assert values(snapshots[photo.name], tag), tag
        data = photo.path.read_bytes()
        guid = re.search(rb'xmpNote:HasExtendedXMP="([0-9A-F]{32})"', data)
        assert guid is not None
        extended = b"".join(corpus.embedded_xmp(photo.path)[1:])
        assert hashlib.md5(extended).hexdigest().upper().encode() == guid.group(1)
        segments = data.count(corpus.EXTENDED_SIGNATURE + guid.group(1))
        assert (segments > 1) == ("xmp-extended-multi-segment" in photo.shapes)
        image, messages = exiv2_read(photo.path)
        assert messages == []
        assert exiv2_values(image.xmpData(), "Xmp.xmpNote.HasExtendedXMP") == {
            "Xmp.xmpNote.HasExtendedXMP": [guid.group(1).decode()]
        }
        assert not exiv2_values(image.xmpData(), key)  # exiv2 reads the standard packet only
    for photo in with_shape(photos, "xmp-over-64k"):
        assert sum(map(len, corpus.embedded_xmp(photo.path))) > 65536
        assert len(values(snapshots[photo.name], "XMP-photoshop:DocumentAncestors")) == 2400  # all, with -m


def test_a_standard_packet_at_the_size_limit(photos: dict[str, CorpusPhoto]) -> None:
    for photo in with_shape(photos, "xmp-near-limit"):
        (packet,) = corpus.embedded_xmp(photo.path)
        assert len(packet) == corpus.STANDARD_PACKET_LIMIT
        assert packet.endswith(b'<?xpacket end="w"?>')
        image, messages = exiv2_read(photo.path)
        assert messages == []
        assert len(exiv2_values(image.xmpData(), "Xmp.darktable.history")) > 100


def test_packet_wrappers(photos: dict[str, CorpusPhoto]) -> None:
    for photo in photos.values():
        packets = corpus.embedded_xmp(photo.path)
        if not packets:
            assert "no-metadata" in photo.shapes, photo.name
            continue
        first = packets[0]
        assert first.startswith(b"\xef\xbb\xbf") == ("xmp-bom" in photo.shapes), photo.name
        assert (b"<?xpacket begin=" not in first) == ("xmp-no-wrapper" in photo.shapes), photo.name
        assert first.startswith(b"<?xpacket begin='") == ("xmp-single-quotes" in photo.shapes), photo.name
        end = first.find(b"<?xpacket end")
        tail = first[first.index(b"?>", end) + 2 :] if end >= 0 else b""
        assert (tail.strip(b"\0") != b"") == ("xmp-trailing-garbage" in photo.shapes), photo.name
        assert (tail != b"" and tail.strip(b"\0") == b"") == ("xmp-trailing-nuls" in photo.shapes), photo.name


# --- PNG and WebP ----------------------------------------------------------------------------------------


def png_chunks(data: bytes) -> list[bytes]:
    kinds, pos = [], 8
    while pos < len(data):
        (size,) = struct.unpack_from(">I", data, pos)
        kinds.append(data[pos + 4 : pos + 8])
        pos += 12 + size
    return kinds


def test_png_layout(photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]) -> None:
    for photo in with_shape(photos, "png-itxt-xmp", "png-exif"):
        kinds = png_chunks(photo.path.read_bytes())
        assert kinds[0] == b"IHDR" and kinds[-1] == b"IEND"
        assert (b"eXIf" in kinds) == ("png-exif" in photo.shapes)
        assert (b"iCCP" in kinds) == ("png-iccp" in photo.shapes)
        assert all(kinds.index(k) < kinds.index(b"IDAT") for k in (b"eXIf", b"iCCP") if k in kinds)
        assert snapshots[photo.name]["XMP-xmp:Rating"] == photo.owner_rating  # from the iTXt chunk
    for photo in with_shape(photos, "png-exif"):
        assert snapshots[photo.name]["IFD0:Make"] == "Google"


def test_webp_layout(photos: dict[str, CorpusPhoto], snapshots: dict[str, dict[str, object]]) -> None:
    simple = {"webp-lossy": [b"VP8 "], "webp-lossless": [b"VP8L"]}
    for shape, expected in simple.items():
        for photo in with_shape(photos, shape):
            assert [k for k, _ in corpus.riff_chunks(photo.path.read_bytes())] == expected
            assert snapshots[photo.name]["File:FileType"] == "WEBP"
    for photo in with_shape(photos, "webp-extended"):
        chunks = corpus.riff_chunks(photo.path.read_bytes())
        kinds = [k for k, _ in chunks]
        assert kinds[0] == b"VP8X" and kinds[-2:] == [b"EXIF", b"XMP "]
        flags = chunks[0][1][0]
        assert bool(flags & 0x20) == (b"ICCP" in kinds) and flags & 0x0C == 0x0C
        snapshot = snapshots[photo.name]
        assert snapshot["File:FileType"] == "Extended WEBP"
        assert (snapshot.get("IFD0:Make") == "Canon") == ("webp-exif-header" not in photo.shapes)


# --- snapshots and their differences ---------------------------------------------------------------------


def test_snapshot_leaves_out_the_file_system_and_hashes_binary_values(
    photos: dict[str, CorpusPhoto], tmp_path: Path
) -> None:
    source = photos["canon_lightroom"].path
    copy = shutil.copy(source, tmp_path / "renamed.jpg")
    os.utime(copy, (1_000_000_000, 1_000_000_000))
    before, after = corpus.exiftool_snapshots([source, Path(copy)])
    assert before == after
    assert not any(k.startswith(("System:", "Composite:")) for k in before)
    thumb = subprocess.run(
        ["exiftool", "-b", "-ThumbnailImage", str(source)], capture_output=True, check=True
    )
    assert before["IFD1:ThumbnailImage"] == "sha256:" + hashlib.sha256(thumb.stdout).hexdigest()
    assert before["XMP-lr:HierarchicalSubject"] == "people|mine"


def test_snapshot_numbers_copies_within_a_group(photos: dict[str, CorpusPhoto]) -> None:
    snapshot = corpus.exiftool_snapshot(photos["canon_lightroom"].path)
    # exiftool lists ExifIFD's and IFD1's resolution under their own groups: no copy numbers needed
    assert snapshot["IFD0:XResolution"] == snapshot["IFD1:XResolution"] == 72
    # the RIFF header and VP8X both give the size: the second becomes #2
    riff = corpus.exiftool_snapshot(photos["webp_extended"].path)
    assert riff["RIFF:ImageWidth"] == riff["RIFF:ImageWidth#2"] == corpus.WIDTH


def exiftool_write(path: Path, *assignments: str) -> None:
    subprocess.run(["exiftool", "-q", "-m", "-overwrite_original", *assignments, str(path)], check=True)


def test_foreign_diff_ignores_what_musiqd_may_write_and_reports_the_rest(
    photos: dict[str, CorpusPhoto], tmp_path: Path
) -> None:
    photo = Path(shutil.copy(photos["canon_lightroom"].path, tmp_path / "photo.jpg"))
    original = corpus.exiftool_snapshot(photo)
    exiftool_write(photo, "-XMP-xmp:Rating=3", "-XMP-dc:Subject+=musiq-koniq-3", "-IFD0:Rating=3")
    rated = corpus.exiftool_snapshot(photo)
    assert rated != original
    assert corpus.foreign_diff(original, rated) == {}
    exiftool_write(photo, "-XMP-xmp:Label=Blue", "-IFD0:Artist=Jane Doe", "-XMP-crs:HasSettings=")
    edited = corpus.exiftool_snapshot(photo)
    assert corpus.foreign_diff(original, edited) == {
        "XMP-xmp:Label": ("Red", "Blue"),
        "IFD0:Artist": (ABSENT, "Jane Doe"),
        "XMP-crs:HasSettings": (True, ABSENT),
    }
    # what may change is a parameter
    assert corpus.foreign_diff(original, rated, allowed=(), allowed_warnings=()) == {
        "XMP-xmp:Rating": (5, 3),
        "XMP-dc:Subject": (["mine", "people"], ["mine", "people", "musiq-koniq-3"]),
        "IFD0:Rating": (ABSENT, 3),
        "IFD1:ThumbnailOffset": (original["IFD1:ThumbnailOffset"], rated["IFD1:ThumbnailOffset"]),
        "XMP-x:XMPToolkit": (original["XMP-x:XMPToolkit"], rated["XMP-x:XMPToolkit"]),
        # the EXIF rating is Windows' own tag: exiftool's -validate notes it
        WARNINGS: ([], ["[minor] Non-standard IFD0 tag 0x4746 Rating"]),
    }


def test_foreign_diff_ignores_own_fields_copies_of_allowed_ones_and_allowed_warnings() -> None:
    uri_note = "[minor] Fixed incorrect URI for xmlns:MicrosoftPhoto"
    before: dict[str, object] = {"XMP-xmp:Rating": 2, "IPTC:Keywords": "a", WARNINGS: ["Superfluous BOM"]}
    after: dict[str, object] = {
        "XMP-xmp:Rating": 4,
        "XMP-xmp:Rating#2": 4,
        "XMP-musiqd:KoniqScore": "3.500",
        "IPTC:Keywords": "a",
        "IPTC:Keywords#2": "b",
        WARNINGS: [uri_note],
    }
    assert corpus.foreign_diff(before, after) == {
        "IPTC:Keywords#2": (ABSENT, "b"),
        WARNINGS: (["Superfluous BOM"], []),
    }
    assert corpus.foreign_diff(before, after, own_prefixes=(), allowed_warnings=()) == {
        "IPTC:Keywords#2": (ABSENT, "b"),
        WARNINGS: (["Superfluous BOM"], [uri_note]),
        "XMP-musiqd:KoniqScore": (ABSENT, "3.500"),
    }
    assert corpus.foreign_diff(before, before) == {}
