"""The ``MUSIQ|best-of-burst`` keyword: written where the scores are, by the ownership rules of the stars,
read back by exiftool (the independent reader) and by real photo managers (darktable, GNOME tracker)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import imagegen
import pytest
from dam_clients import darktable_missing, darktable_read, tracker_missing, tracker_read
from hypothesis import given, settings
from hypothesis import strategies as st
from imagegen import USER_HIERARCHY, USER_KEYWORDS, exiftool
from test_metadata_write import ALWAYS_DIFFERENT, MOVED, record

from musiq_daemon.metadata import xmp as ours
from musiq_daemon.metadata.writer import WritePolicy, write_best_of_burst, write_score

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")
needs_darktable = pytest.mark.skipif(darktable_missing() is not None, reason=darktable_missing() or "")
needs_tracker = pytest.mark.skipif(tracker_missing() is not None, reason=tracker_missing() or "")

BUCKET_LEAF = "musiq-koniq-4"  # record(score=3.5)
BUCKET_TAG = "MUSIQ|koniq|musiq-koniq-4"
BEST_TAG = "MUSIQ|best-of-burst"
BEST_LEAF = "best-of-burst"
ADD_TAG = (f"-XMP-lr:HierarchicalSubject+={BEST_TAG}",)
REMOVE_TAG = (f"-XMP-lr:HierarchicalSubject-={BEST_TAG}",)
# What a best-of-burst write may change, as exiftool names it.
BEST_FIELDS = {"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-musiqd:BestOfBurstWritten"}


def dump(path: Path) -> dict[str, Any]:
    """Every tag exiftool reads, by group:name (lists stay lists)."""
    data: dict[str, Any] = json.loads(exiftool("-j", "-G1", "-a", "-struct", "-b", path))[0]
    data.pop("SourceFile", None)
    return data


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return [str(v) for v in value] if isinstance(value, list) else [str(value)]


def changed_fields(before: dict[str, Any], after: dict[str, Any]) -> set[str]:
    return (
        {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)} - ALWAYS_DIFFERENT - MOVED
    )


@pytest.fixture
def scored_jpeg(tmp_path: Path) -> Path:
    """A camera JPEG keyworded and rated (2 stars) by its owner, then scored by musiqd."""
    photo = imagegen.make_photo(tmp_path / "IMG_0001.jpg", 480, 320, quality=90)
    write_score(photo, record(score=3.5), WritePolicy())
    return photo


@pytest.mark.parametrize("ext", ["jpg", "tif", "png", "webp"])
def test_added_then_taken_away_touching_nothing_else(ext: str, tmp_path: Path) -> None:
    kwargs: dict[str, Any] = {"quality": 90} if ext in ("jpg", "webp") else {}
    photo = imagegen.make_photo(tmp_path / f"IMG_0001.{ext}", 480, 320, **kwargs)
    write_score(photo, record(score=3.5), WritePolicy())
    scored = dump(photo)

    result = write_best_of_burst(photo, True)
    assert (result.target, result.changed, result.best_written) == ("embedded", True, True)
    best = dump(photo)
    assert changed_fields(scored, best) <= BEST_FIELDS
    assert as_list(best["XMP-lr:HierarchicalSubject"]) == [*USER_HIERARCHY, BUCKET_TAG, BEST_TAG]
    assert as_list(best["XMP-dc:Subject"]) == [*USER_KEYWORDS, BUCKET_LEAF, BEST_LEAF]
    assert best["XMP-musiqd:BestOfBurstWritten"] is True
    assert best["XMP-xmp:Rating"] == 2  # the owner's stars stay

    result = write_best_of_burst(photo, False)
    assert (result.changed, result.best_written) == (True, False)
    after = dump(photo)
    assert changed_fields(scored, after) == {"XMP-musiqd:BestOfBurstWritten"}
    assert after["XMP-musiqd:BestOfBurstWritten"] is False


def test_writing_it_again_changes_nothing(scored_jpeg: Path) -> None:
    write_best_of_burst(scored_jpeg, True)
    content, info = scored_jpeg.read_bytes(), scored_jpeg.stat()
    again = write_best_of_burst(scored_jpeg, True)
    assert not again.changed
    assert scored_jpeg.read_bytes() == content
    assert (scored_jpeg.stat().st_ino, scored_jpeg.stat().st_mtime_ns) == (info.st_ino, info.st_mtime_ns)


def test_a_photo_that_never_was_the_best_is_never_written(scored_jpeg: Path) -> None:
    content, mtime = scored_jpeg.read_bytes(), scored_jpeg.stat().st_mtime_ns
    result = write_best_of_burst(scored_jpeg, False)
    assert not result.changed
    assert scored_jpeg.read_bytes() == content and scored_jpeg.stat().st_mtime_ns == mtime
    assert "XMP-musiqd:BestOfBurstWritten" not in dump(scored_jpeg)


def test_a_keyword_the_user_removed_stays_removed(scored_jpeg: Path) -> None:
    write_best_of_burst(scored_jpeg, True)
    exiftool("-q", "-overwrite_original", f"-XMP-dc:Subject-={BEST_LEAF}", *REMOVE_TAG, scored_jpeg)
    content = scored_jpeg.read_bytes()
    for best in (True, False):
        result = write_best_of_burst(scored_jpeg, best)
        assert (result.changed, result.best_written) == (False, None)  # the user's
    assert scored_jpeg.read_bytes() == content


def test_a_keyword_the_user_set_is_never_taken_away(scored_jpeg: Path) -> None:
    exiftool("-q", "-overwrite_original", f"-XMP-dc:Subject+={BEST_LEAF}", *ADD_TAG, scored_jpeg)
    content = scored_jpeg.read_bytes()
    for best in (False, True):
        result = write_best_of_burst(scored_jpeg, best)
        assert (result.changed, result.best_written) == (False, None)  # the user's
    # The index never says musiqd added it (it records the user's state): known stays False.
    assert write_best_of_burst(scored_jpeg, False, known=False).best_written is None
    assert scored_jpeg.read_bytes() == content


def test_the_index_recognises_its_keyword_after_a_photo_manager_dropped_the_record(scored_jpeg: Path) -> None:
    write_best_of_burst(scored_jpeg, True)
    exiftool("-q", "-overwrite_original", "-XMP-musiqd:all=", scored_jpeg)  # as darktable rewrites a sidecar
    assert BEST_LEAF in as_list(dump(scored_jpeg)["XMP-dc:Subject"])
    assert not write_best_of_burst(scored_jpeg, False).changed  # without the index: the user's
    assert write_best_of_burst(scored_jpeg, False, known=True).changed
    after = dump(scored_jpeg)
    assert BEST_LEAF not in as_list(after["XMP-dc:Subject"])
    assert BEST_TAG not in as_list(after["XMP-lr:HierarchicalSubject"])


def test_digikam_and_windows_containers_get_it_when_they_exist(tmp_path: Path) -> None:
    photo = imagegen.make_photo(
        tmp_path / "IMG_0001.jpg",
        320,
        214,
        extra_xmp=["-XMP-digiKam:TagsList=Places/France/Paris", "-XMP-microsoft:LastKeywordXMP=Paris"],
    )
    write_best_of_burst(photo, True)
    best = dump(photo)
    assert as_list(best["XMP-digiKam:TagsList"]) == ["Places/France/Paris", "MUSIQ/best-of-burst"]
    assert as_list(best["XMP-microsoft:LastKeywordXMP"]) == ["Paris", "MUSIQ/best-of-burst"]
    write_best_of_burst(photo, False)
    after = dump(photo)
    assert as_list(after["XMP-digiKam:TagsList"]) == ["Places/France/Paris"]
    assert as_list(after["XMP-microsoft:LastKeywordXMP"]) == ["Paris"]


def test_a_container_that_held_only_the_keyword_goes_away(tmp_path: Path) -> None:
    photo = imagegen.make_photo(tmp_path / "IMG_0001.jpg", 320, 214, keywords=(), hierarchy=())
    write_best_of_burst(photo, True)
    assert as_list(dump(photo)["XMP-dc:Subject"]) == [BEST_LEAF]
    write_best_of_burst(photo, False)
    after = dump(photo)
    assert "XMP-dc:Subject" not in after and "XMP-lr:HierarchicalSubject" not in after


def test_raw_keyword_goes_to_the_sidecar_and_taking_it_away_creates_none(tmp_path: Path) -> None:
    raw = imagegen.make_dng(tmp_path / "IMG_0002.dng", 320, 240, preview=(160, 120))
    original = raw.read_bytes()
    result = write_best_of_burst(raw, False)
    assert (result.changed, result.best_written) == (False, False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["IMG_0002.dng"]

    write_score(raw, record(score=3.5), WritePolicy())
    sidecar = tmp_path / "IMG_0002.dng.xmp"
    result = write_best_of_burst(raw, True)
    assert (result.target, result.path, result.changed) == ("sidecar", sidecar, True)
    assert BEST_TAG in as_list(dump(sidecar)["XMP-lr:HierarchicalSubject"])
    assert raw.read_bytes() == original


def test_index_only_writes_nothing(scored_jpeg: Path) -> None:
    content = scored_jpeg.read_bytes()
    result = write_best_of_burst(scored_jpeg, True, WritePolicy(mode="index-only"))
    assert (result.target, result.changed) == ("none", False)
    assert scored_jpeg.read_bytes() == content


def test_a_rescore_keeps_the_keyword(scored_jpeg: Path) -> None:
    write_best_of_burst(scored_jpeg, True)
    write_score(scored_jpeg, record(score=3.9), WritePolicy())  # another bucket
    after = dump(scored_jpeg)
    assert as_list(after["XMP-lr:HierarchicalSubject"]) == [
        *USER_HIERARCHY, BEST_TAG, "MUSIQ|koniq|musiq-koniq-5"
    ]  # fmt: skip
    assert after["XMP-musiqd:BestOfBurstWritten"] is True


def test_a_users_keyword_of_that_name_survives_score_writes(tmp_path: Path) -> None:
    """Only a best-of-burst write may change a best-of-burst keyword: a score write that creates
    lr:hierarchicalSubject, or a new sidecar, carries the owner's ``best-of-burst`` over like any keyword."""
    assert not ours.is_any_own_keyword(ours.SUBJECT_KEY, BEST_LEAF)
    photo = imagegen.make_photo(
        tmp_path / "IMG_0001.jpg", 320, 214, keywords=("holiday", BEST_LEAF), hierarchy=()
    )
    write_score(photo, record(score=3.5), WritePolicy())
    assert as_list(dump(photo)["XMP-lr:HierarchicalSubject"]) == ["holiday", BEST_LEAF, BUCKET_TAG]
    raw = imagegen.make_dng(tmp_path / "IMG_0002.dng", 320, 240, preview=(160, 120))
    exiftool("-q", "-overwrite_original", "-XMP-dc:Subject=holiday", f"-XMP-dc:Subject+={BEST_LEAF}", raw)
    result = write_score(raw, record(score=3.5), WritePolicy())
    assert result.target == "sidecar" and result.path is not None
    assert as_list(dump(result.path)["XMP-dc:Subject"]) == ["holiday", BEST_LEAF, BUCKET_LEAF]


@needs_darktable
def test_darktable_shows_the_best_of_burst_tag(scored_jpeg: Path, tmp_path: Path) -> None:
    write_best_of_burst(scored_jpeg, True)
    view = darktable_read(scored_jpeg, tmp_path / "darktable")
    assert BEST_TAG in view.user_tags and BUCKET_TAG in view.user_tags
    assert set(USER_HIERARCHY) <= set(view.user_tags)


@needs_darktable
def test_darktable_shows_it_from_a_raw_sidecar(tmp_path: Path) -> None:
    raw = imagegen.make_dng(tmp_path / "IMG_0003.dng", 320, 240, preview=(160, 120))
    write_score(raw, record(score=3.5), WritePolicy())
    write_best_of_burst(raw, True)
    view = darktable_read(raw, tmp_path / "darktable")
    assert sorted(view.user_tags) == sorted([BUCKET_TAG, BEST_TAG])


@needs_tracker
def test_tracker_shows_the_best_of_burst_keyword(scored_jpeg: Path) -> None:
    write_best_of_burst(scored_jpeg, True)
    assert BEST_LEAF in tracker_read(scored_jpeg).keywords
    write_best_of_burst(scored_jpeg, False)
    assert BEST_LEAF not in tracker_read(scored_jpeg).keywords


KEYWORD = st.sampled_from(
    ["mine", "holiday", "Places|France", "MUSIQ", "MUSIQ|koniq|favourite", "best-of-burst-2", "MUSIQ|best",
     "best of burst", "Ünïcødé 写真", "a/b", "best-of-burst", "MUSIQ|best-of-burst", "MUSIQ/best-of-burst"]
)  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    containers=st.dictionaries(
        st.sampled_from(ours.KEYWORD_CONTAINERS), st.lists(KEYWORD, max_size=4, unique=True), max_size=4
    )
)
def test_the_owners_keywords_survive_adding_and_taking_away_in_every_container(
    containers: dict[str, list[str]],
) -> None:
    """Property: whatever keywords the owner has in whichever containers, marking a photo and unmarking it
    again leaves every owner keyword where it was, in order; the mark shows in dc:subject and
    lr:hierarchicalSubject and in the digiKam and Windows containers that exist."""
    import exiv2

    ours.register_namespace()
    xmp = exiv2.XmpData()
    for key, items in containers.items():
        if items:
            ours.set_items(
                xmp, key, items, exiv2.TypeId.xmpSeq if key == ours.TAGS_LIST_KEY else exiv2.TypeId.xmpBag
            )
    before = {key: ours.get_items(xmp, key) for key in ours.KEYWORD_CONTAINERS}
    if any(ours.best_keyword(key) in (items or []) for key, items in before.items()):
        # The owner has the keyword (musiqd never wrote it): musiqd touches nothing, either way.
        for best in (True, False):
            assert ours.apply_best_of_burst(xmp, best) == ours.BestApplied(False, False)
        assert {key: ours.get_items(xmp, key) for key in ours.KEYWORD_CONTAINERS} == before
        return

    assert ours.apply_best_of_burst(xmp, True) == ours.BestApplied(True, True)
    assert ours.best_keyword_reads_back(xmp, True)
    for key in ours.KEYWORD_CONTAINERS:
        items = ours.get_items(xmp, key)
        if before[key] is not None:
            assert items == [*before[key], ours.best_keyword(key)], key  # appended, the owner's untouched
        elif key in (ours.TAGS_LIST_KEY, ours.MS_KEYWORDS_KEY):
            assert items is None, key  # never created
    assert ours.apply_best_of_burst(xmp, True) == ours.BestApplied(False, True)  # idempotent

    assert ours.apply_best_of_burst(xmp, False).changed
    assert ours.best_keyword_reads_back(xmp, False)
    for key in ours.KEYWORD_CONTAINERS:
        if before[key] is not None:
            assert ours.get_items(xmp, key) == before[key], key
    assert ours.apply_best_of_burst(xmp, True).changed  # the best again: the record says False, no keyword
