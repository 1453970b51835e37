"""Writing scores into photos whose metadata other programs wrote, imperfectly too (tests/metadata_corpus.py):
every photo gets its score (embedded, or in a sidecar where its XMP cannot be repaired without loss, with a
line that says so), the owner's stars and keywords stay, every foreign tag keeps its value (exiftool before
and after), and the pixels are the same."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import metadata_corpus as corpus
import numpy as np
import pytest
from PIL import Image
from test_metadata_write import record

from musiq_daemon.metadata.content_hash import content_hash
from musiq_daemon.metadata.safefile import FileSignature
from musiq_daemon.metadata.writer import WritePolicy, write_best_of_burst, write_score

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool is the reference reader")

# XMP in a simple (VP8 or VP8L only) WebP needs the extended format's header chunk, which repeats the size.
SIMPLE_WEBP_GAINS = frozenset({"File:FileType", "RIFF:WebP_Flags", "RIFF:ImageWidth", "RIFF:ImageHeight"})
# What the owner's keywords look like to exiftool, in each container it may hold them.
KEYWORD_TAGS = ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList")


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> list[corpus.CorpusPhoto]:
    return corpus.build_corpus(tmp_path_factory.mktemp("corpus"))


def fresh(photo: corpus.CorpusPhoto, tmp_path: Path) -> Path:
    target = tmp_path / photo.path.name
    shutil.copy2(photo.path, target)
    return target


def pixels(path: Path) -> np.ndarray[Any, Any]:
    with Image.open(path) as img:
        return np.asarray(img.convert("RGB"))


def as_list(value: object) -> list[str]:
    if value is None or value is corpus.ABSENT:
        return []
    items = [str(v) for v in value] if isinstance(value, list) else [str(value)]
    return [i for i in items if i]  # exiftool shows an empty array as ""


def keywords(snapshot: dict[str, object]) -> set[str]:
    out: set[str] = set()
    for tag in KEYWORD_TAGS:
        out |= {k.replace("/", "|").rsplit("|", 1)[-1] for k in as_list(snapshot.get(tag))}
    return out


def without_repaired_copies(
    diff: dict[str, tuple[object, object]], before: dict[str, object]
) -> dict[str, Any]:
    """A lossless repair removes exact duplicates (the copies exiftool listed as ``Tag#2`` with the same
    value as the one kept) and what exiftool warned about; it never adds a warning."""
    out: dict[str, Any] = {}
    for key, (old, new) in diff.items():
        base = key.split("#", 1)[0]
        if "#" in key and new is corpus.ABSENT and old == before.get(base):
            continue
        if key == corpus.WARNINGS and set(as_list(new)) <= set(as_list(old)):
            continue  # a repair may only remove exiftool's complaints (duplicates, a stray byte-order mark)
        out[key] = (old, new)
    return out


def test_every_photo_is_written_and_nothing_foreign_changes(
    built: list[corpus.CorpusPhoto], tmp_path: Path
) -> None:
    paths = [fresh(photo, tmp_path) for photo in built]
    before = corpus.exiftool_snapshots(paths)
    contents = [(p.read_bytes(), FileSignature.of(p)) for p in paths]
    images = [pixels(p) for p in paths]

    results = [write_score(p, record(score=3.5), WritePolicy()) for p in paths]

    after = corpus.exiftool_snapshots(paths)
    for photo, path, result, old, new, content, image in zip(
        built, paths, results, before, after, contents, images, strict=True
    ):
        name = photo.name
        assert np.array_equal(pixels(path), image), name
        if photo.expect_xmp_repair == "unrepairable":
            # Left exactly as it was; the score went to a sidecar, and one line says why.
            assert (path.read_bytes(), FileSignature.of(path)) == content, name
            assert result.target == "sidecar" and result.path == path.with_name(path.name + ".xmp"), name
            assert len(result.notes) == 1 and path.name in result.notes[0], name
            assert "different values" in result.notes[0], name
            assert result.rating_written is None, name  # the owner's stars (5 and 3) are not musiqd's
            (side,) = corpus.exiftool_snapshots([result.path])
            assert "XMP-xmp:Rating" not in side and side["XMP-musiqd:KoniqScore"] == 3.5, name
            assert {corpus.MINE} <= keywords(side), name  # the owner's keywords are carried over
            continue
        assert result.target == "embedded" and result.changed, name
        assert (
            result.content_hash == content_hash(content[0], path=path) == content_hash(path.read_bytes())
        ), name
        if photo.expect_xmp_repair == "lossless":
            assert len(result.notes) == 1 and "repaired its XMP losslessly" in result.notes[0], name
        allowed = corpus.MAY_WRITE | corpus.MAY_MOVE
        if old.get("File:FileType") == "WEBP":  # a simple WebP needs the extended header to hold XMP
            allowed |= SIMPLE_WEBP_GAINS
        diff = without_repaired_copies(corpus.foreign_diff(old, new, allowed=allowed), old)
        assert diff == {}, name
        assert new["XMP-musiqd:KoniqScore"] == 3.5, name
        # The owner's stars stay; an unrated photo gets musiqd's 4 stars.
        if photo.owner_rating not in (None, 0):
            assert new.get("XMP-xmp:Rating") == old.get("XMP-xmp:Rating"), name
            assert result.rating_written is None, name
        else:
            assert new["XMP-xmp:Rating"] == 4 and result.rating_written == 4, name
        # The owner's keywords are still in every container a photo manager reads, with musiqd's.
        for tag in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject"):
            leaves = {k.rsplit("|", 1)[-1] for k in as_list(new.get(tag))}
            assert set(photo.owner_keywords) <= leaves, (name, tag)
            assert "musiq-koniq-4" in leaves, (name, tag)
        for tag in ("XMP-digiKam:TagsList", "XMP-microsoft:LastKeywordXMP"):
            if tag in old:
                assert set(as_list(old[tag])) <= set(as_list(new[tag])), (name, tag)
                assert "MUSIQ/koniq/musiq-koniq-4" in as_list(new[tag]), (name, tag)
        assert not list(tmp_path.glob(".musiqd-tmp-*"))


def test_sidecar_mode_never_contradicts_the_owners_stars(
    built: list[corpus.CorpusPhoto], tmp_path: Path
) -> None:
    paths = [fresh(photo, tmp_path) for photo in built]
    contents = [(p.read_bytes(), FileSignature.of(p)) for p in paths]

    results = [write_score(p, record(score=3.5), WritePolicy(mode="sidecar")) for p in paths]

    sidecars = corpus.exiftool_snapshots([r.path for r in results if r.path is not None])
    for photo, path, content, result, side in zip(built, paths, contents, results, sidecars, strict=True):
        name = photo.name
        assert (path.read_bytes(), FileSignature.of(path)) == content, name
        assert result.target == "sidecar" and result.path == path.with_name(path.name + ".xmp"), name
        assert side["XMP-musiqd:KoniqScore"] == 3.5, name
        rating = side.get("XMP-xmp:Rating", corpus.ABSENT)
        if photo.expect_xmp_repair == "unrepairable":
            assert rating is corpus.ABSENT and result.rating_written is None, name  # 5 or 3: not guessed
        elif photo.owner_rating not in (None, 0):
            assert rating == photo.owner_rating and result.rating_written is None, name
        else:
            assert rating == 4 and result.rating_written == 4, name
        assert set(photo.owner_keywords) <= keywords(side), name


def test_best_of_burst_on_every_shape_changes_only_the_keyword(
    built: list[corpus.CorpusPhoto], tmp_path: Path
) -> None:
    """The best-of-burst keyword, added then taken away, on photos whose metadata other programs wrote:
    the owner's keywords stay in every container, stars and everything foreign stay as they were."""
    paths = [fresh(photo, tmp_path) for photo in built]
    for path in paths:
        write_score(path, record(score=3.5), WritePolicy())
    scored = corpus.exiftool_snapshots(paths)
    added = [write_best_of_burst(p, True) for p in paths]
    marked = corpus.exiftool_snapshots([r.path for r in added if r.path is not None])
    removed = [write_best_of_burst(p, False) for p in paths]
    unmarked = corpus.exiftool_snapshots([r.path for r in removed if r.path is not None])
    for photo, path, result, old, mid, new in zip(built, paths, added, scored, marked, unmarked, strict=True):
        name = photo.name
        if photo.expect_xmp_repair == "unrepairable":  # its scores live in a sidecar: so does the keyword
            assert result.target == "sidecar" and result.path == path.with_name(path.name + ".xmp"), name
            assert "MUSIQ|best-of-burst" in as_list(mid.get("XMP-lr:HierarchicalSubject")), name
            assert "MUSIQ|best-of-burst" not in as_list(new.get("XMP-lr:HierarchicalSubject")), name
            for snapshot in (mid, new):  # the owner's keywords stay in the sidecar throughout
                assert {corpus.MINE} <= keywords(snapshot), name
            continue
        assert result.target == "embedded" and result.changed, name
        allowed = {"XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList",
                   "XMP-microsoft:LastKeywordXMP", "XMP-musiqd:BestOfBurstWritten"}  # fmt: skip
        assert (
            without_repaired_copies(corpus.foreign_diff(old, mid, allowed=allowed | corpus.MAY_MOVE), old)
            == {}
        )
        assert "MUSIQ|best-of-burst" in as_list(mid.get("XMP-lr:HierarchicalSubject")), name
        assert "best-of-burst" in as_list(mid.get("XMP-dc:Subject")), name
        for tag in ("XMP-dc:Subject", "XMP-lr:HierarchicalSubject", "XMP-digiKam:TagsList",
                    "XMP-microsoft:LastKeywordXMP"):  # fmt: skip
            # Taken away again: every container exactly as the score write left it.
            assert as_list(new.get(tag)) == as_list(old.get(tag)), (name, tag)
        assert mid.get("XMP-xmp:Rating") == old.get("XMP-xmp:Rating"), name
