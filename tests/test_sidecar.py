"""Scores in XMP sidecars: naming, updating the user's sidecars without losing anything, originals intact."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import imagegen
import pytest
from imagegen import USER_HIERARCHY, USER_KEYWORDS, exiftool
from test_metadata_write import (
    ALWAYS_DIFFERENT,
    OUR_KEYWORDS,
    SCORED_AT,
    assert_refused,
    differing,
    dump,
    expected_struct,
    ours_read_back,
    record,
)

from musiq_daemon.errors import DecodeError
from musiq_daemon.metadata.content_hash import content_hash
from musiq_daemon.metadata.safefile import FileSignature
from musiq_daemon.metadata.writer import WritePolicy, sidecar_targets, write_score

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")


@pytest.fixture(scope="module")
def raw_bytes() -> bytes:
    """A small DNG with an embedded preview: stored as .dng, or as .CR2 to stand for a proprietary RAW (the
    decoder and the metadata library go by content)."""
    return imagegen.dng_bytes(320, 240, preview=(160, 120))


@pytest.fixture(scope="module")
def jpeg_photo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return imagegen.make_photo(tmp_path_factory.mktemp("jpeg") / "photo.jpg", 480, 320, rating=None)


def untouched(*paths: Path) -> list[tuple[bytes, FileSignature]]:
    return [(p.read_bytes(), FileSignature.of(p)) for p in paths]


def test_raw_gets_a_new_sidecar_and_stays_untouched(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    before = untouched(raw)

    result = write_score(raw, record(score=3.5), WritePolicy())

    # The default name is the one darktable and digiKam read and re-read.
    sidecar = tmp_path / "IMG_1234.CR2.xmp"
    assert (result.target, result.path, result.changed) == ("sidecar", sidecar, True)
    assert result.rating_written == 4
    assert result.signature == FileSignature.of(sidecar)
    assert untouched(raw) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_1234.CR2", "IMG_1234.CR2.xmp"]
    digest = content_hash(raw_bytes, path=raw)
    back = ours_read_back(sidecar)[0]
    assert back["XMP-musiqd:Koniq"] == expected_struct("koniq", "3.500", "62.500", digest)
    assert back["XMP-xmp:Rating"] == back["XMP-musiqd:RatingWritten"] == "4"
    assert back["XMP-dc:Subject"] == ["musiq-koniq-4"]
    assert back["XMP-lr:HierarchicalSubject"] == ["MUSIQ|koniq|musiq-koniq-4"]
    assert "XMP-microsoft:RatingPercent" not in back  # mirrors belong in embedded metadata only
    # A standalone packet that exiftool reads as XMP, and -X (RDF/XML) shows the flattened tags.
    assert sidecar.read_bytes().lstrip().startswith((b"<?xpacket", b"<?xml", b"<x:xmpmeta"))
    rdf = exiftool("-X", sidecar)
    assert "<XMP-musiqd:KoniqScore>3.500</XMP-musiqd:KoniqScore>" in rdf
    assert f'musiqd:ScoredAt="{SCORED_AT}"' in sidecar.read_text()

    again = write_score(raw, record(score=3.5), WritePolicy(), scored_at="2030-01-01T00:00:00Z")
    assert not again.changed and again.signature == result.signature == FileSignature.of(sidecar)


@pytest.mark.parametrize(("naming", "name"), [("replace", "IMG_1234.xmp"), ("append", "IMG_1234.dng.xmp")])
def test_dng_gets_a_sidecar_by_default_named_by_policy(
    raw_bytes: bytes, tmp_path: Path, naming: Any, name: str
) -> None:
    raw = tmp_path / "IMG_1234.dng"
    raw.write_bytes(raw_bytes)
    before = untouched(raw)
    result = write_score(raw, record(), WritePolicy(sidecar_naming=naming))
    assert result.target == "sidecar" and result.path == tmp_path / name and (tmp_path / name).is_file()
    assert untouched(raw) == before


def test_lightroom_sidecar_keeps_everything_it_holds(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    sidecar = tmp_path / "IMG_1234.xmp"
    sidecar.write_text(imagegen.lightroom_sidecar(rating=3))
    before = dump(sidecar, args=("-a", "-G1", "-struct"))[0]

    result = write_score(raw, record(score=3.5), WritePolicy())

    after = dump(sidecar, args=("-a", "-G1", "-struct"))[0]
    ours_fields = {k for k in after if k.startswith("XMP-musiqd:")}
    assert ours_fields == {"XMP-musiqd:Koniq"}  # the stars are the user's: no RatingWritten
    assert differing(before, after) - ALWAYS_DIFFERENT - OUR_KEYWORDS == ours_fields
    assert result.rating_written is None and after["XMP-xmp:Rating"] == "3"
    assert after["XMP-dc:Subject"] == [*USER_KEYWORDS, "musiq-koniq-4"]
    assert after["XMP-lr:HierarchicalSubject"] == [*USER_HIERARCHY, "MUSIQ|koniq|musiq-koniq-4"]
    assert after["XMP-crs:ToneCurvePV2012"] == ["0, 0", "64, 60", "255, 255"]
    assert after["XMP-crs:Look"]["Name"] == "Adobe Color"
    assert after["XMP-dc:Title-fr-FR"] == "Coucher de soleil sur la Seine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_1234.CR2", "IMG_1234.xmp"]


def test_darktable_sidecar_is_updated_instead_of_creating_one(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    sidecar = tmp_path / "IMG_1234.CR2.xmp"
    sidecar.write_text(imagegen.darktable_sidecar(raw.name, rating=1))
    before = dump(sidecar, args=("-a", "-G1", "-struct"))[0]

    result = write_score(raw, record(score=3.5), WritePolicy())  # the "replace" default does not matter

    after = dump(sidecar, args=("-a", "-G1", "-struct"))[0]
    assert result.path == sidecar and not (tmp_path / "IMG_1234.xmp").exists()
    changed = differing(before, after) - ALWAYS_DIFFERENT - OUR_KEYWORDS
    assert changed == {"XMP-musiqd:Koniq"}
    assert len(after["XMP-darktable:History"]) == 3
    assert after["XMP-darktable:History"][2]["Operation"] == "filmicrgb"
    assert after["XMP-dc:Subject"] == ["birds", "darktable|format|cr2", "musiq-koniq-4"]


def test_both_sidecar_styles_are_updated(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    lightroom, darktable = tmp_path / "IMG_1234.xmp", tmp_path / "IMG_1234.CR2.xmp"
    lightroom.write_text(imagegen.lightroom_sidecar())
    darktable.write_text(imagegen.darktable_sidecar(raw.name))

    result = write_score(raw, record(), WritePolicy(sidecar_naming="append"))

    assert [f.path for f in result.files] == [darktable, lightroom]  # the configured convention first
    assert all(f.changed and f.signature == FileSignature.of(f.path) for f in result.files)
    for item in ours_read_back(lightroom, darktable):
        assert item["XMP-musiqd:Koniq"]["Score"] == "3.500"


def test_raw_plus_jpeg_pair_does_not_share_a_sidecar(
    raw_bytes: bytes, jpeg_photo: Path, tmp_path: Path
) -> None:
    raw, jpeg = tmp_path / "IMG_1234.CR2", tmp_path / "IMG_1234.JPG"
    raw.write_bytes(raw_bytes)
    shutil.copy2(jpeg_photo, jpeg)
    before = untouched(raw, jpeg)
    policy = WritePolicy(mode="sidecar", sidecar_naming="replace")

    from_jpeg = write_score(jpeg, record(score=3.1), policy)
    from_raw = write_score(raw, record(score=3.9), policy)

    assert from_jpeg.path == tmp_path / "IMG_1234.JPG.xmp"  # the RAW owns IMG_1234.xmp
    assert from_raw.path == tmp_path / "IMG_1234.xmp"
    assert untouched(raw, jpeg) == before
    jpeg_side, raw_side = ours_read_back(tmp_path / "IMG_1234.JPG.xmp", tmp_path / "IMG_1234.xmp")
    assert jpeg_side["XMP-musiqd:Koniq"]["Score"] == "3.100"
    assert raw_side["XMP-musiqd:Koniq"]["Score"] == "3.900"
    # An existing IMG_1234.xmp is the RAW's: the JPEG never touches it.
    assert sidecar_targets(jpeg, "replace") == [(tmp_path / "IMG_1234.JPG.xmp", True)]


def test_heic_always_gets_a_sidecar(tmp_path: Path) -> None:
    photo = imagegen.make_heic(tmp_path / "IMG_5678.HEIC", 320, 240)
    before = untouched(photo)
    result = write_score(photo, record(), WritePolicy())  # embedding is the default mode
    assert result.target == "sidecar" and result.path == tmp_path / "IMG_5678.HEIC.xmp"
    assert untouched(photo) == before
    assert ours_read_back(result.path)[0]["XMP-musiqd:Koniq"]["ContentHash"] == result.content_hash


def test_sidecar_mode_never_touches_the_original(jpeg_photo: Path, tmp_path: Path) -> None:
    photo = tmp_path / "IMG_0001.jpg"
    shutil.copy2(jpeg_photo, photo)
    before = untouched(photo)
    result = write_score(photo, record(), WritePolicy(mode="sidecar"))
    assert result.target == "sidecar" and result.path == tmp_path / "IMG_0001.jpg.xmp"
    assert untouched(photo) == before
    assert "XMP-musiqd:Koniq" not in ours_read_back(photo)[0]


def test_an_in_camera_rating_is_the_users(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.dng"
    raw.write_bytes(raw_bytes)
    exiftool("-q", "-overwrite_original", "-XMP-xmp:Rating=3", raw)  # cameras store their rating like this
    result = write_score(raw, record(score=3.5), WritePolicy())
    back = ours_read_back(tmp_path / "IMG_1234.dng.xmp")[0]
    # The owner's stars are carried into the new sidecar (darktable shows a sidecar without stars as 1 star)
    # and stay the owner's.
    assert result.rating_written is None and back["XMP-xmp:Rating"] == "3"
    assert "XMP-musiqd:RatingWritten" not in back
    assert back["XMP-dc:Subject"] == ["musiq-koniq-4"]


def test_unparseable_sidecar_is_never_overwritten(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    sidecar = tmp_path / "IMG_1234.xmp"
    sidecar.write_text(imagegen.lightroom_sidecar().replace("</dc:title>", "</dc:titel>"))
    assert_refused(sidecar, DecodeError, lambda: write_score(raw, record(), WritePolicy()))


def test_a_sidecar_name_that_is_not_xmp_is_left_alone(raw_bytes: bytes, tmp_path: Path) -> None:
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    sidecar = tmp_path / "IMG_1234.xmp"
    shutil.copy2(imagegen.make_jpeg(tmp_path / "x.jpg", 64, 48), sidecar)
    assert_refused(sidecar, DecodeError, lambda: write_score(raw, record(), WritePolicy()))


def forget_ours(sidecar: Path) -> None:
    """What a photo manager that writes its own sidecar leaves: everything but musiqd's rating record."""
    data = re.sub(rb'\s*musiqd:Rating(Written|Model)="[^"]*"', b"", sidecar.read_bytes())
    data = re.sub(rb"\s*<musiqd:Rating(Written|Model)>[^<]*</musiqd:Rating\1>", b"", data)
    assert b"RatingWritten" not in data
    sidecar.write_bytes(data)


def test_stars_stay_musiqds_after_a_photo_manager_rewrote_the_sidecar(
    raw_bytes: bytes, tmp_path: Path
) -> None:
    """darktable writes its own sidecar from the one musiqd made: the stars stay, musiqd's record of them
    (RatingWritten) does not. The index's record (``known_rating``) keeps them musiqd's; without it they
    are taken for the owner's, and a different value is the owner's in any case."""
    raw = tmp_path / "IMG_1234.CR2"
    raw.write_bytes(raw_bytes)
    first = write_score(raw, record(score=3.5), WritePolicy())
    assert first.rating_written == 4 and first.path is not None
    forget_ours(first.path)

    unknown = write_score(raw, record(score=3.1), WritePolicy())
    assert unknown.rating_written is None
    assert ours_read_back(first.path)[0]["XMP-xmp:Rating"] == "4"

    known = write_score(raw, record(score=3.1), WritePolicy(), known_rating=4)
    back = ours_read_back(first.path)[0]
    assert known.rating_written == 3 and back["XMP-xmp:Rating"] == back["XMP-musiqd:RatingWritten"] == "3"

    exiftool("-q", "-overwrite_original", "-XMP-xmp:Rating=5", first.path)
    forget_ours(first.path)
    owner = write_score(raw, record(score=3.9), WritePolicy(), known_rating=3)
    assert owner.rating_written is None and ours_read_back(first.path)[0]["XMP-xmp:Rating"] == "5"
