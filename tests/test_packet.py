"""The tolerant XMP reader (lossless repair, flattening) and the container splicer, on their own."""

from __future__ import annotations

import codecs
import io
import struct

import exiv2
import imagegen
import pytest
from PIL import Image

from musiq_daemon.metadata import containers, packet
from musiq_daemon.metadata.content_hash import content_hash

XMP_NS = "http://ns.adobe.com/xap/1.0/"
DC_NS = "http://purl.org/dc/elements/1.1/"


def wrap(body: str) -> bytes:
    return (
        '<?xpacket begin="\ufeff" id="W5M0MpCehiHzreSzNTczkc9d"?>\n'
        '<x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">'
        f'{body}</rdf:RDF></x:xmpmeta>\n<?xpacket end="w"?>'
    ).encode()


DESC = (
    '<rdf:Description rdf:about="" xmlns:xmp="http://ns.adobe.com/xap/1.0/" '
    'xmlns:dc="http://purl.org/dc/elements/1.1/"'
)
MINE = "<dc:subject><rdf:Bag><rdf:li>mine</rdf:li></rdf:Bag></dc:subject>"
GIMP_STYLE = wrap(
    f'{DESC} xmp:Rating="5">{MINE}</rdf:Description>'
    f"{DESC}><xmp:Rating>5</xmp:Rating><dc:subject><rdf:Bag><rdf:li>mine</rdf:li></rdf:Bag></dc:subject>"
    "</rdf:Description>"
)


def toolkit_reads(data: bytes) -> bool:
    image = exiv2.ImageFactory.open(data)
    image.readMetadata()
    return not image.xmpData().empty()


def test_exact_duplicates_are_removed_and_nothing_else_changes() -> None:
    assert not toolkit_reads(GIMP_STYLE)  # "Duplicate property or field node"
    prepared = packet.prepare(GIMP_STYLE)
    assert toolkit_reads(prepared.data)
    assert prepared.repairs == ("removed exact duplicates of xmp:Rating, dc:subject",)
    assert set(packet.flatten(prepared.data)) == set(packet.flatten(GIMP_STYLE))
    assert packet.flatten(prepared.data) == [
        (f"{XMP_NS}Rating", "5"),
        (f"{DC_NS}subject", "<Bag>"),
        (f"{DC_NS}subject[1]", "mine"),
    ]


def test_duplicates_that_disagree_are_not_guessed() -> None:
    conflicting = GIMP_STYLE.replace(b"<xmp:Rating>5<", b"<xmp:Rating>3<")
    with pytest.raises(
        packet.UnrepairableError, match=r"xmp:Rating twice with different values \('5' and '3'\)"
    ):
        packet.prepare(conflicting)
    # The owner's values are still read, every one of them.
    assert packet.property_values(conflicting, f"{XMP_NS}Rating") == ["5", "3"]


def test_duplicate_struct_fields_are_repaired_one_level_down() -> None:
    data = wrap(
        '<rdf:Description rdf:about="" xmlns:exif="http://ns.adobe.com/exif/1.0/">'
        '<exif:Flash rdf:parseType="Resource"><exif:Fired>False</exif:Fired><exif:Mode>2</exif:Mode>'
        "<exif:Fired>False</exif:Fired></exif:Flash></rdf:Description>"
    )
    assert not toolkit_reads(data)
    prepared = packet.prepare(data)
    assert toolkit_reads(prepared.data) and prepared.data.count(b"<exif:Fired>") == 1


@pytest.mark.parametrize(
    ("raw", "kept"),
    [
        (codecs.BOM_UTF8 + GIMP_STYLE, True),
        (GIMP_STYLE + b"\x00" * 100 + b"garbage after the packet", True),
        (b"junk" + GIMP_STYLE, True),
        (codecs.BOM_UTF16_LE + GIMP_STYLE.decode().encode("utf-16-le"), True),
    ],
)
def test_bytes_around_the_packet_and_utf16_are_handled(raw: bytes, kept: bool) -> None:
    prepared = packet.prepare(raw)
    assert toolkit_reads(prepared.data) == kept
    assert packet.flatten(prepared.data) == packet.flatten(packet.prepare(GIMP_STYLE).data)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (GIMP_STYLE.replace(b"mine", b"m\xe9ine"), "not valid UTF-8"),
        (GIMP_STYLE.replace(b"</rdf:Bag>", b"</rdf:Bog>", 1), "not well-formed"),
        (GIMP_STYLE[:200], "cut off"),
        (b"no packet here", "holds no xmpmeta"),
    ],
)
def test_unreadable_packets_say_why(raw: bytes, reason: str) -> None:
    with pytest.raises(packet.UnrepairableError, match=reason):
        packet.prepare(raw)


def test_flatten_is_independent_of_serialisation() -> None:
    attribute = wrap(f'{DESC} xmp:Rating="2"/>')
    element = wrap(
        '<rdf:Description rdf:about="" xmlns:ns1="http://ns.adobe.com/xap/1.0/"><ns1:Rating>2</ns1:Rating>'
        "</rdf:Description>"
    )
    assert packet.flatten(attribute) == packet.flatten(element) == [(f"{XMP_NS}Rating", "2")]


def test_extended_xmp_merges_into_one_packet() -> None:
    standard = wrap(
        '<rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/" '
        'xmlns:xmp="http://ns.adobe.com/xap/1.0/" xmpNote:HasExtendedXMP="ABC" xmp:Rating="3"/>'
    )
    extended = wrap('<rdf:Description rdf:about="" xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/" '
                    'photoshop:History="long"/>')  # fmt: skip
    merged = packet.merge_extended(standard, extended)
    assert packet.flatten(merged) == [
        ("http://ns.adobe.com/photoshop/1.0/History", "long"),
        (f"{XMP_NS}Rating", "3"),
    ]


# --- containers ---------------------------------------------------------------------------------------------


def jpeg_with_exif_rating(rating: int) -> bytes:
    buffer = io.BytesIO()
    exif = Image.Exif()
    exif[0x010F] = "Maker"
    exif[0x4746] = rating
    Image.fromarray(imagegen.scene(64, 48)).save(buffer, "JPEG", exif=exif.tobytes())
    return buffer.getvalue()


def test_jpeg_splice_keeps_every_other_segment_and_patches_exif_in_place() -> None:
    data = jpeg_with_exif_rating(0)
    layout = containers.read_layout(data, "JPEG")
    assert layout.packet is None
    entries = containers.exif_ratings(layout.exif)
    assert entries[containers.EXIF_RATING].value == 0
    assert layout.exif is not None
    patched = containers.patch_exif(
        layout.exif, {containers.EXIF_RATING: 4, containers.EXIF_RATING_PERCENT: 75}
    )
    assert len(patched) == len(layout.exif)
    assert (
        sum(a != b for a, b in zip(patched, layout.exif, strict=True)) == 1
    )  # one byte (little-endian 0 -> 4)
    new = layout.rebuild(GIMP_STYLE, None, patched)
    after = containers.read_layout(new, "JPEG")
    assert after.others() == layout.others() and after.packet == GIMP_STYLE and after.exif == patched
    assert content_hash(new) == content_hash(data)
    assert new.index(containers.XMP_HEADER) > new.index(
        containers.EXIF_HEADER
    )  # after EXIF, as exiftool does


def test_jpeg_extended_segments_round_trip() -> None:
    data = jpeg_with_exif_rating(0)
    layout = containers.read_layout(data, "JPEG")
    history = "x" * 150_000
    photoshop = 'xmlns:photoshop="http://ns.adobe.com/photoshop/1.0/"'
    extended = wrap(f'<rdf:Description rdf:about="" {photoshop} photoshop:History="{history}"/>')
    guid = containers.extended_guid(extended)
    standard = wrap(
        '<rdf:Description rdf:about="" xmlns:xmpNote="http://ns.adobe.com/xmp/note/" '
        f'xmpNote:HasExtendedXMP="{guid}"/>'
    )
    new = layout.rebuild(standard, extended, None)
    assert new.count(containers.EXTENDED_HEADER) == 3  # 150 kB in segments of at most 65400 bytes
    after = containers.read_layout(new, "JPEG")
    assert after.packet is not None and dict(packet.flatten(after.packet)) == {
        "http://ns.adobe.com/photoshop/1.0/History": "x" * 150_000
    }


def test_png_xmp_goes_before_the_image_data() -> None:
    buffer = io.BytesIO()
    Image.fromarray(imagegen.scene(32, 24)).save(buffer, "PNG")
    data = buffer.getvalue()
    layout = containers.read_layout(data, "PNG")
    new = layout.rebuild(GIMP_STYLE, None, None)
    assert new.index(b"iTXtXML:com.adobe.xmp") < new.index(b"IDAT")
    after = containers.read_layout(new, "PNG")
    assert after.packet == GIMP_STYLE and after.others() == layout.others()
    with Image.open(io.BytesIO(new)) as img:
        img.load()


@pytest.mark.parametrize("lossless", [False, True])
def test_simple_webp_gets_an_extended_header(lossless: bool) -> None:
    buffer = io.BytesIO()
    Image.fromarray(imagegen.scene(50, 30)).save(buffer, "WEBP", lossless=lossless)
    data = buffer.getvalue()
    layout = containers.read_layout(data, "WEBP")
    new = layout.rebuild(GIMP_STYLE, None, None)
    assert new[12:16] == b"VP8X" and new[20] & 0x04  # the XMP flag
    width, height = (int.from_bytes(new[24:27], "little") + 1, int.from_bytes(new[27:30], "little") + 1)
    assert (width, height) == (50, 30)
    assert struct.unpack("<I", new[4:8])[0] == len(new) - 8
    after = containers.read_layout(new, "WEBP")
    assert after.packet == GIMP_STYLE and after.others() == layout.others()
    assert content_hash(new) == content_hash(data)
    with Image.open(io.BytesIO(new)) as img:
        assert img.size == (50, 30)
        img.load()
