"""Writing scores into photos (embedded metadata), checked against exiftool as an independent reader."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import imagegen
import numpy as np
import pytest
from imagegen import USER_HIERARCHY, USER_KEYWORDS, exiftool
from PIL import Image

from musiq_daemon.api import ScoreRecord
from musiq_daemon.errors import (
    DecodeError,
    DiskFullError,
    FileChangedError,
    MusiqError,
    ReadOnlyError,
    UsageError,
)
from musiq_daemon.metadata import containers, safefile, writer
from musiq_daemon.metadata import xmp as ours
from musiq_daemon.metadata.content_hash import content_hash
from musiq_daemon.metadata.safefile import FileSignature
from musiq_daemon.metadata.writer import WritePolicy, write_score

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")

SCORED_AT = "2024-05-01T10:00:00+02:00"
SCORED_AT_AS_EXIFTOOL_SHOWS_IT = "2024:05:01 10:00:00+02:00"  # it converts every XMP date to EXIF style
FORMATS = ["jpg", "tif", "png", "webp"]

# Fields a write may change, as exiftool names them. The file's own dates and size change with any write;
# the XMP toolkit name is rewritten by every XMP serialiser.
ALWAYS_DIFFERENT = {
    "System:FileModifyDate",
    "System:FileAccessDate",
    "System:FileInodeChangeDate",
    "System:FileSize",
    "XMP-x:XMPToolkit",
}
# Positions in the file: the EXIF thumbnail moves when the EXIF block before it grows (the rating mirrors)
# or is re-encoded, and a TIFF's strips move when the metadata stored before them grows.
MOVED = {"IFD1:ThumbnailOffset", "IFD0:StripOffsets"}
OUR_KEYWORDS = {"XMP-dc:Subject", "XMP-lr:HierarchicalSubject"}
# With the stars: exiftool notes (as "[minor]") that MicrosoftPhoto:Rating is written under the namespace
# URI with a trailing slash, the spelling Windows' own metadata layer and exiv2 use; it reads it all the same.
OUR_STARS = {
    "XMP-xmp:Rating",
    "XMP-microsoft:RatingPercent",
    "IFD0:Rating",
    "IFD0:RatingPercent",
    "ExifTool:Warning",
}
EXIF_MIRRORS = {"IFD0:Rating", "IFD0:RatingPercent"}
MS_URI_NOTE = "[minor] Fixed incorrect URI for xmlns:MicrosoftPhoto"
# PNG and WebP keep EXIF in a chunk that the writer always re-encodes, little-endian.
REENCODED_EXIF = {"png": {"File:ExifByteOrder"}, "webp": {"File:ExifByteOrder"}}


def record(model: str = "koniq", score: float = 3.5, *, version: str = "1a2b3c4d5e6f") -> ScoreRecord:
    scale_max = 10.0 if model == "ava" else 5.0
    return ScoreRecord(
        score=score,
        raw=score if model == "ava" else (score - 1.0) * 25.0,
        model_id=model,
        model_version=version,
        variant="dynamic-int8",
        model_sha256="0" * 64,
        scale_min=1.0,
        scale_max=scale_max,
        resolution_policy="max_side=1024",
        device="cpu",
        num_tokens=512,
        scored_size=(427, 640),
        stored_size=(640, 427),
        source="dct-1/2",
        format="JPEG",
        orientation_applied=False,
        scored_at=SCORED_AT,
    )


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each format twice: rated by the user (2 stars) and unrated; plus a JPEG with digiKam tags."""
    root = tmp_path_factory.mktemp("originals")
    out: dict[str, Path] = {}
    for ext in FORMATS:
        kwargs: dict[str, Any] = {"quality": 90} if ext in ("jpg", "webp") else {}
        out[ext] = imagegen.make_photo(root / f"rated.{ext}", 640, 427, **kwargs)
        out[f"unrated-{ext}"] = imagegen.make_photo(root / f"unrated.{ext}", 640, 427, rating=None, **kwargs)
    # Unrated with rating entries of 0 in EXIF and XMP (as some cameras and Windows leave them): the EXIF
    # mirrors can be patched in place.
    out["zero-jpg"] = imagegen.make_photo(root / "zero.jpg", 640, 427, rating=0, quality=90)
    out["digikam"] = imagegen.make_photo(
        root / "digikam.jpg",
        320,
        214,
        rating=None,
        extra_xmp=["-XMP-digiKam:TagsList=Places/France/Paris", "-XMP-digiKam:TagsList=holiday"],
    )
    return out


def copy(originals: dict[str, Path], name: str, tmp_path: Path, stem: str = "IMG_0001") -> Path:
    source = originals[name]
    target = tmp_path / f"{stem}{source.suffix}"
    shutil.copy2(source, target)
    return target


def dump(*paths: Path, args: tuple[str, ...] = ("-a", "-G1", "-b")) -> list[dict[str, Any]]:
    """exiftool's JSON for each path, numbers kept as the text in the file."""
    result: list[dict[str, Any]] = json.loads(exiftool("-j", *args, *paths), parse_float=str, parse_int=str)
    return result


READ_BACK = ("-XMP-musiqd:all", "-XMP-dc:Subject", "-XMP-lr:all", "-XMP-xmp:Rating", "-XMP-microsoft:all")


def ours_read_back(*paths: Path) -> list[dict[str, Any]]:
    """Our fields (structs as structs, values as written) and the stars' EXIF mirrors."""
    return dump(*paths, args=("-G1", "-struct", "-n", *READ_BACK, "-IFD0:Rating", "-IFD0:RatingPercent"))


def differing(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - {"SourceFile"}


def pixels(path: Path) -> np.ndarray[Any, Any]:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def expected_struct(model: str, score: str, raw: str, digest: str, scale_max: str = "5") -> dict[str, str]:
    return {
        "Score": score,
        "RawScore": raw,
        "Model": model,
        "ModelVersion": "1a2b3c4d5e6f",
        "Variant": "dynamic-int8",
        "ScaleMin": "1",
        "ScaleMax": scale_max,
        "ResolutionPolicy": "max_side=1024",
        "ScoredAt": SCORED_AT_AS_EXIFTOOL_SHOWS_IT,
        "ContentHash": digest,
    }


# --- embedded writes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", FORMATS)
def test_embedded_write_changes_only_owned_fields(
    ext: str, originals: dict[str, Path], tmp_path: Path
) -> None:
    rated = copy(originals, ext, tmp_path, "rated")
    unrated = copy(originals, f"unrated-{ext}", tmp_path, "unrated")
    before = dump(rated, unrated)
    pixels_before = [pixels(rated), pixels(unrated)]
    hashes_before = [content_hash(p.read_bytes(), path=p) for p in (rated, unrated)]

    results = [write_score(p, record(score=3.5), WritePolicy()) for p in (rated, unrated)]

    after = dump(rated, unrated)
    allowed = ALWAYS_DIFFERENT | MOVED | OUR_KEYWORDS | REENCODED_EXIF.get(ext, set())
    ours_fields = {k for k in after[1] if k.startswith("XMP-musiqd:")}
    assert differing(before[0], after[0]) - allowed == {k for k in after[0] if k.startswith("XMP-musiqd:")}
    # EXIF is never re-serialised: rating mirrors are patched where they exist, never added.
    assert differing(before[1], after[1]) - allowed == ours_fields | OUR_STARS - EXIF_MIRRORS
    assert "IFD0:Rating" not in after[1]
    assert after[1]["ExifTool:Warning"] == MS_URI_NOTE and "ExifTool:Warning" not in before[1]
    for result, path, digest in zip(results, (rated, unrated), hashes_before, strict=True):
        assert result.target == "embedded" and result.changed and result.path == path
        assert result.signature == FileSignature.of(path)
        assert result.content_hash == digest == content_hash(path.read_bytes(), path=path)
    assert all(np.array_equal(a, pixels(p)) for a, p in zip(pixels_before, (rated, unrated), strict=True))
    assert not list(tmp_path.glob(".musiqd-tmp-*"))

    # The user's 2 stars stay; the unrated photo gets 4 stars (3.5 is in the 3.4..3.8 bucket) everywhere.
    assert results[0].rating_written is None and results[1].rating_written == 4
    back = ours_read_back(rated, unrated)
    assert back[0]["XMP-xmp:Rating"] == "2" and back[0]["IFD0:Rating"] == "2"
    assert "XMP-musiqd:RatingWritten" not in back[0]
    assert back[1]["XMP-xmp:Rating"] == "4" and back[1]["XMP-musiqd:RatingWritten"] == "4"
    assert back[1]["XMP-musiqd:RatingModel"] == "koniq"
    assert back[1]["XMP-microsoft:RatingPercent"] == "75"
    assert "IFD0:Rating" not in back[1] and "IFD0:RatingPercent" not in back[1]
    for item, digest in zip(back, hashes_before, strict=True):
        assert item["XMP-musiqd:Koniq"] == expected_struct("koniq", "3.500", "62.500", digest)
        assert item["XMP-dc:Subject"] == [*USER_KEYWORDS, "musiq-koniq-4"]
        assert item["XMP-lr:HierarchicalSubject"] == [*USER_HIERARCHY, "MUSIQ|koniq|musiq-koniq-4"]
    assert f'musiqd:ScoredAt="{SCORED_AT}"' in exiftool("-b", "-XMP", unrated)
    flat = dump(unrated, args=("-G1", "-XMP-musiqd:all"))[0]
    assert flat["XMP-musiqd:KoniqScore"] == "3.500"
    assert flat["XMP-musiqd:KoniqContentHash"] == hashes_before[1]


@pytest.mark.parametrize("ext", FORMATS)
def test_second_identical_write_touches_nothing(ext: str, originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, ext, tmp_path)
    first = write_score(photo, record(), WritePolicy())
    content = photo.read_bytes()
    signature = FileSignature.of(photo)

    again = write_score(photo, record(), WritePolicy())
    later = write_score(photo, record(), WritePolicy(), scored_at="2025-01-02T03:04:05+00:00")

    assert first.changed and not again.changed and not later.changed
    assert again.signature == later.signature == signature == first.signature
    assert FileSignature.of(photo) == signature and photo.read_bytes() == content


def test_a_new_model_version_rewrites(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "jpg", tmp_path)
    write_score(photo, record(), WritePolicy())
    result = write_score(photo, record(version="99ffee00aa11"), WritePolicy())
    assert result.changed
    assert ours_read_back(photo)[0]["XMP-musiqd:Koniq"]["ModelVersion"] == "99ffee00aa11"


def test_user_changed_stars_are_never_overwritten(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "zero-jpg", tmp_path)
    assert write_score(photo, record(score=3.5), WritePolicy()).rating_written == 4
    exiftool("-q", "-overwrite_original", "-XMP-xmp:Rating=5", photo)  # as Lightroom saves a change

    result = write_score(photo, record(score=3.1), WritePolicy())

    back = ours_read_back(photo)[0]
    assert result.changed and result.rating_written is None
    assert back["XMP-xmp:Rating"] == "5"
    assert back["XMP-musiqd:RatingWritten"] == "4"  # the record of what musiqd wrote last
    assert back["IFD0:Rating"] == "4"  # a stale mirror is the user's business too
    assert back["XMP-dc:Subject"] == [*USER_KEYWORDS, "musiq-koniq-3"]
    assert back["XMP-musiqd:Koniq"]["Score"] == "3.100"


def test_rescore_moves_our_stars_and_bucket(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "zero-jpg", tmp_path)
    write_score(photo, record(score=3.5), WritePolicy())
    exiftool(
        "-q", "-overwrite_original", "-XMP-dc:Subject+=sunset", "-XMP-lr:HierarchicalSubject+=sunset", photo
    )

    result = write_score(photo, record(score=3.1), WritePolicy())

    back = ours_read_back(photo)[0]
    assert result.changed and result.rating_written == 3
    assert back["XMP-xmp:Rating"] == back["XMP-musiqd:RatingWritten"] == back["IFD0:Rating"] == "3"
    assert back["IFD0:RatingPercent"] == back["XMP-microsoft:RatingPercent"] == "50"
    assert back["XMP-dc:Subject"] == [*USER_KEYWORDS, "sunset", "musiq-koniq-3"]
    assert back["XMP-lr:HierarchicalSubject"] == [*USER_HIERARCHY, "sunset", "MUSIQ|koniq|musiq-koniq-3"]


def test_two_models_keep_their_own_values(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "unrated-png", tmp_path)
    write_score(photo, record("koniq", 3.5), WritePolicy())
    ava = write_score(photo, record("ava", 5.2), WritePolicy())
    write_score(photo, record("koniq", 3.9), WritePolicy())

    back = ours_read_back(photo)[0]
    digest = ava.content_hash
    assert digest is not None and ava.rating_written is None  # only the rating model writes stars
    assert back["XMP-musiqd:Koniq"] == expected_struct("koniq", "3.900", "72.500", digest)
    assert back["XMP-musiqd:Ava"] == expected_struct("ava", "5.200", "5.200", digest, scale_max="10")
    assert back["XMP-xmp:Rating"] == "5" and back["XMP-musiqd:RatingModel"] == "koniq"
    assert back["XMP-dc:Subject"] == [*USER_KEYWORDS, "musiq-ava-3", "musiq-koniq-5"]


def test_digikam_tags_get_the_keyword_only_where_they_exist(
    originals: dict[str, Path], tmp_path: Path
) -> None:
    tagged = copy(originals, "digikam", tmp_path, "tagged")
    plain = copy(originals, "jpg", tmp_path, "plain")
    for photo in (tagged, plain):
        write_score(photo, record(), WritePolicy())
    back = dump(tagged, plain, args=("-G1", "-XMP-digiKam:TagsList"))
    assert back[0]["XMP-digiKam:TagsList"] == ["Places/France/Paris", "holiday", "MUSIQ/koniq/musiq-koniq-4"]
    assert "XMP-digiKam:TagsList" not in back[1]


def test_no_stars_and_no_keywords_when_disabled(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "unrated-jpg", tmp_path)
    result = write_score(photo, record(), WritePolicy(rating_model=None, keywords=False))
    back = ours_read_back(photo)[0]
    assert result.changed and result.rating_written is None
    assert "XMP-xmp:Rating" not in back and back["XMP-dc:Subject"] == list(USER_KEYWORDS)
    assert back["XMP-musiqd:Koniq"]["Score"] == "3.500"


def test_preserve_mtime_is_opt_in(originals: dict[str, Path], tmp_path: Path) -> None:
    kept, moved = copy(originals, "jpg", tmp_path, "kept"), copy(originals, "jpg", tmp_path, "moved")
    for photo in (kept, moved):
        os.utime(photo, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))
    write_score(kept, record(), WritePolicy(preserve_mtime=True))
    write_score(moved, record(), WritePolicy())
    assert kept.stat().st_mtime_ns == 1_600_000_000_000_000_000
    assert moved.stat().st_mtime_ns > 1_600_000_000_000_000_000


def test_index_only_writes_nothing(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "jpg", tmp_path)
    signature = FileSignature.of(photo)
    result = write_score(photo, record(), WritePolicy(mode="index-only"))
    assert (result.target, result.changed, result.path, result.signature) == ("none", False, None, None)
    assert FileSignature.of(photo) == signature and sorted(tmp_path.iterdir()) == [photo]


def test_dng_is_embedded_when_asked(tmp_path: Path) -> None:
    photo = imagegen.make_dng(tmp_path / "IMG_0002.dng", 320, 240, preview=(160, 120))
    digest = content_hash(photo.read_bytes(), path=photo)
    result = write_score(photo, record(), WritePolicy(dng="embed"))
    assert result.target == "embedded" and result.changed
    assert content_hash(photo.read_bytes(), path=photo) == digest
    assert ours_read_back(photo)[0]["XMP-musiqd:Koniq"]["ContentHash"] == digest
    assert not (tmp_path / "IMG_0002.xmp").exists()


# --- refusals: the photo stays byte-identical --------------------------------------------------------------


def assert_refused(photo: Path, error: type[MusiqError], call: Any) -> str:
    content, signature = photo.read_bytes(), FileSignature.of(photo)
    with pytest.raises(error) as caught:
        call()
    message = str(caught.value)
    assert message and "\n" not in message
    assert photo.read_bytes() == content and FileSignature.of(photo) == signature
    assert not list(photo.parent.glob(".musiqd-tmp-*"))
    return message


def test_truncated_jpeg_is_refused(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = tmp_path / "broken.jpg"
    photo.write_bytes(originals["jpg"].read_bytes()[:30_000])
    message = assert_refused(photo, DecodeError, lambda: write_score(photo, record(), WritePolicy()))
    assert "truncated" in message


def test_garbage_jpeg_is_refused(tmp_path: Path) -> None:
    photo = tmp_path / "garbage.jpg"
    photo.write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 40)
    assert_refused(photo, DecodeError, lambda: write_score(photo, record(), WritePolicy()))


@pytest.mark.parametrize("name", ["notes.txt", "notes.jpg"])
def test_unsupported_file_is_refused(name: str, tmp_path: Path) -> None:
    photo = tmp_path / name
    photo.write_text("shopping list: milk, bread\n")
    assert_refused(photo, DecodeError, lambda: write_score(photo, record(), WritePolicy()))


def test_unparseable_xmp_is_not_overwritten(originals: dict[str, Path], tmp_path: Path) -> None:
    """XMP that is not even XML: the photo stays byte-identical, the score goes to a sidecar, one line
    says so, and the owner's stars in the broken packet still count (no stars in the sidecar)."""
    photo = tmp_path / "badxmp.jpg"
    photo.write_bytes(originals["jpg"].read_bytes().replace(b"</rdf:Bag>", b"</rdf:Bog>", 1))
    content, signature = photo.read_bytes(), FileSignature.of(photo)

    result = write_score(photo, record(), WritePolicy())

    assert photo.read_bytes() == content and FileSignature.of(photo) == signature
    assert result.target == "sidecar" and result.path == tmp_path / "badxmp.jpg.xmp"
    assert (
        len(result.notes) == 1
        and "not well-formed" in result.notes[0]
        and "badxmp.jpg.xmp" in result.notes[0]
    )
    assert result.rating_written is None  # the photo's EXIF holds the owner's 2 stars
    back = dump(result.path, args=("-XMP-xmp:Rating", "-XMP-musiqd:RatingWritten", "-XMP-musiqd:KoniqScore"))[
        0
    ]
    # The owner's stars (from EXIF) are carried over, never musiqd's.
    assert back["Rating"] == "2" and "RatingWritten" not in back and back["KoniqScore"] == "3.500"


def test_read_only_directory_is_refused(originals: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "readonly"
    folder.mkdir()
    photo = copy(originals, "jpg", folder)
    content = photo.read_bytes()
    folder.chmod(0o555)
    # Root ignores permission bits: the writer runs in a child without the capability to override them.
    prefix = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop the permission override")
        prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner", "--"]
    script = (
        "import sys; from pathlib import Path; sys.path.insert(0, 'tests');"
        "from test_metadata_write import record; from musiq_daemon.metadata.writer import write_score;"
        "from musiq_daemon.errors import MusiqError\n"
        "try:\n write_score(Path(sys.argv[1]), record())\n"
        "except MusiqError as exc:\n print(type(exc).__name__); print(exc)\n"
    )
    try:
        done = subprocess.run(
            [*prefix, sys.executable, "-c", script, str(photo)],
            capture_output=True,
            text=True,
            cwd=Path(__file__).resolve().parent.parent,
            check=False,
        )
    finally:
        folder.chmod(0o755)
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0] == ReadOnlyError.__name__, done.stdout + done.stderr
    assert len(lines) == 2 and "read-only" in lines[1]
    assert photo.read_bytes() == content


def test_read_only_photo_is_refused(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "jpg", tmp_path)
    photo.chmod(0o444)
    message = assert_refused(photo, ReadOnlyError, lambda: write_score(photo, record(), WritePolicy()))
    assert "read-only" in message


def test_full_disk_is_refused(
    originals: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy(originals, "jpg", tmp_path)

    def no_space(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safefile, "_write_all", no_space)
    assert_refused(photo, DiskFullError, lambda: write_score(photo, record(), WritePolicy()))


def test_a_change_by_another_program_wins(
    originals: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    photo = copy(originals, "jpg", tmp_path)
    verify = writer._verify_spliced

    def save_meanwhile(*args: Any) -> None:
        verify(*args)
        exiftool("-q", "-overwrite_original_in_place", "-XMP-dc:Subject+=edited elsewhere", photo)

    monkeypatch.setattr(writer, "_verify_spliced", save_meanwhile)
    with pytest.raises(FileChangedError):
        write_score(photo, record(), WritePolicy())
    assert "edited elsewhere" in dump(photo, args=("-XMP-dc:Subject",))[0]["Subject"]
    assert "KoniqScore" not in exiftool("-s", "-XMP-musiqd:all", photo)


# --- options and the rules on their own --------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "inplace"},
        {"dng": "both"},
        {"sidecar_naming": "darktable"},
        {"star_thresholds": {"koniq": (3.0, 2.0, 3.5, 4.0)}},
        {"star_thresholds": {"koniq": (2.6, 3.0, 3.4)}},
        {"star_thresholds": {"ava": (4.5, 5.0, 5.5, 6.0)}},  # the rating model lost its thresholds
        {"star_thresholds": {"Bad-Id": (1.0, 2.0, 3.0, 4.0)}, "rating_model": None},
    ],
)
def test_bad_policies_are_usage_errors(kwargs: dict[str, Any]) -> None:
    with pytest.raises(UsageError):
        WritePolicy(**kwargs)


def test_scored_at_needs_a_zone(originals: dict[str, Path], tmp_path: Path) -> None:
    photo = copy(originals, "jpg", tmp_path)
    assert_refused(
        photo,
        UsageError,
        lambda: write_score(photo, record(), WritePolicy(), scored_at="2024-05-01T10:00:00"),
    )


@pytest.mark.parametrize(
    ("score", "stars"), [(1.0, 1), (2.599, 1), (2.6, 2), (3.0, 3), (3.399, 3), (3.4, 4), (3.8, 5), (5.0, 5)]
)
def test_star_buckets(score: float, stars: int) -> None:
    assert ours.stars_for(score, ours.DEFAULT_STAR_THRESHOLDS["koniq"]) == stars


def test_percent_mapping_round_trips() -> None:
    assert [ours.rating_percent(s) for s in range(1, 6)] == [1, 25, 50, 75, 99]
    assert [ours.stars_from_percent(ours.rating_percent(s)) for s in range(1, 6)] == [1, 2, 3, 4, 5]
    assert ours.stars_from_percent(0) == 0 and ours.stars_from_percent(-1) == -1


def xmp_with(**values: str) -> Any:
    import exiv2

    ours.register_namespace()
    data = exiv2.XmpData()
    keys = {"rating": ours.XMP_RATING_KEY, "written": ours.RATING_WRITTEN_KEY, "ms": ours.MS_RATING_KEY}
    for name, text in values.items():
        ours.set_text(data, keys[name], text)
    return data


@pytest.mark.parametrize(
    ("values", "owned"),
    [
        ({}, True),  # unrated
        ({"rating": "0"}, True),
        ({"rating": "3"}, False),  # the user's stars
        ({"rating": "-1"}, False),  # rejected
        ({"rating": "abc"}, False),
        ({"rating": "4", "written": "4"}, True),  # still ours
        ({"rating": "4", "written": "4", "ms": "75"}, True),
        ({"rating": "4", "written": "4", "ms": "99"}, False),  # a mirror says the user changed it
        ({"rating": "5", "written": "4"}, False),
        ({"rating": "0", "written": "4"}, False),  # the user cleared our stars: stays cleared
        ({"written": "4"}, False),
    ],
)
def test_rating_ownership(values: dict[str, str], owned: bool) -> None:
    assert ours.read_rating_state(xmp_with(**values), None).owned() is owned


def test_inherited_rating_decides_for_a_sidecar_without_one() -> None:
    assert not ours.read_rating_state(xmp_with(), None).owned(inherited=(3,))
    assert ours.read_rating_state(xmp_with(), None).owned(inherited=(0,))
    assert ours.read_rating_state(xmp_with(rating="0"), None).owned(inherited=(3,))


def test_only_our_own_bucket_keywords_are_replaced() -> None:
    import exiv2

    data = xmp_with()
    hierarchy = ["MUSIQ|koniq|favourite", "MUSIQ|koniq|musiq-koniq-2", "MUSIQ|ava|musiq-ava-3", "trip"]
    ours.set_items(data, ours.HIERARCHICAL_KEY, hierarchy, exiv2.TypeId.xmpBag)
    ours.set_items(data, ours.SUBJECT_KEY, ["musiq-koniq-2", "musiq-koniq", "trip"], exiv2.TypeId.xmpSeq)

    assert ours.write_keywords(data, ours.BucketKeyword("koniq", 4))
    assert not ours.write_keywords(data, ours.BucketKeyword("koniq", 4))  # already right: untouched

    assert ours.get_items(data, ours.HIERARCHICAL_KEY) == [
        "MUSIQ|koniq|favourite",
        "MUSIQ|ava|musiq-ava-3",
        "trip",
        "MUSIQ|koniq|musiq-koniq-4",
    ]
    assert ours.get_items(data, ours.SUBJECT_KEY) == ["musiq-koniq", "trip", "musiq-koniq-4"]
    assert data[ours.SUBJECT_KEY].typeId() == exiv2.TypeId.xmpSeq  # a Seq written by another tool stays one
    assert ours.TAGS_LIST_KEY not in data


def test_tiff_iptc_and_photoshop_blocks_are_kept_byte_for_byte(
    originals: dict[str, Path], tmp_path: Path
) -> None:
    """exiv2 rewrites a TIFF whole and sees only the first IPTC block: the writer compares the raw IPTC and
    Photoshop entries before and after, not only what exiv2 reads."""
    photo = copy(originals, "unrated-tif", tmp_path)
    exiftool("-q", "-overwrite_original", "-IPTC:By-line=Someone", "-IPTC:Credit=Agency", photo)
    blobs = containers.tiff_blobs(photo.read_bytes())
    assert blobs[containers.TIFF_IPTC].count(b"\x1c\x02") >= 2

    assert write_score(photo, record(), WritePolicy()).target == "embedded"

    assert containers.tiff_blobs(photo.read_bytes()) == blobs
    back = dump(photo, args=("-IPTC:all",))[0]
    assert back["By-line"] == "Someone" and back["Credit"] == "Agency"


def test_several_models_in_one_write(originals: dict[str, Path], tmp_path: Path) -> None:
    """Every model's values, keywords and the rating model's stars land in one replacement of the file."""
    photo = copy(originals, "unrated-jpg", tmp_path)
    before = FileSignature.of(photo)

    result = writer.write_scores(photo, [record("koniq", 3.5), record("ava", 5.2)], WritePolicy())

    after = FileSignature.of(photo)
    assert result.changed and result.rating_written == 4 and after.inode != before.inode  # replaced once
    back = ours_read_back(photo)[0]
    assert back["XMP-musiqd:Koniq"]["Score"] == "3.500" and back["XMP-musiqd:Ava"]["Score"] == "5.200"
    assert back["XMP-dc:Subject"] == [*USER_KEYWORDS, "musiq-koniq-4", "musiq-ava-3"]
    again = writer.write_scores(photo, [record("koniq", 3.5), record("ava", 5.2)], WritePolicy())
    assert not again.changed and FileSignature.of(photo) == after
    with pytest.raises(UsageError):
        writer.write_scores(photo, [record("koniq"), record("koniq")], WritePolicy())
