"""Finding photos: one filter and one walker for `musiqd score` and the daemon."""

from __future__ import annotations

from pathlib import Path

import pytest

from musiq_daemon.config import Config
from musiq_daemon.discover import DEFAULT_FILTER, PathFilter, iter_photos, walk
from musiq_daemon.errors import UsageError


def tree(root: Path, names: list[str]) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def test_the_configured_filter_is_the_daemons(tmp_path: Path) -> None:
    tree(
        tmp_path,
        [
            "b.JPG", "a.jpg", "notes.txt", "IMG_1.CR2", "IMG_1.CR2.xmp", "half.jpg.part", ".musiqd-tmp-1.jpg",
            "@eaDir/a.jpg/SYNOPHOTO_THUMB_XL.jpg", "#recycle/old.jpg", "2024/c.heic", "2024/d.png",
        ],
    )  # fmt: skip
    found = [f.rel for f in walk(tmp_path, PathFilter.of(Config()))]
    # A folder's files by name (case-insensitive suffixes), then its folders; junk, sidecars, temp files out.
    assert found == ["IMG_1.CR2", "a.jpg", "b.JPG", "2024/c.heic", "2024/d.png"]
    assert list(iter_photos([tmp_path], PathFilter.of(Config()))) == [tmp_path / f for f in found]


def test_include_and_exclude_from_the_configuration(tmp_path: Path) -> None:
    tree(tmp_path, ["a.jpg", "b.png", "drafts/c.jpg", "keep/d.jpg"])
    only_jpeg = PathFilter(include=["*.jpg"], exclude=["drafts"])
    assert [f.rel for f in walk(tmp_path, only_jpeg)] == ["a.jpg", "keep/d.jpg"]


def test_files_given_directly_links_and_missing_paths(tmp_path: Path) -> None:
    tree(tmp_path, ["photos/a.jpg", "outside/b.jpg", ".hidden/c.jpg"])
    photos = tmp_path / "photos"
    (photos / "link.jpg").symlink_to(tmp_path / "outside" / "b.jpg")
    (photos / "linked-folder").symlink_to(tmp_path / "outside")
    given = tmp_path / "outside" / "readme.txt"
    given.write_text("not a photo, but asked for by name")
    found = list(iter_photos([photos, given]))
    # Links to files are read (`score` follows them), linked folders are never walked; a file named on
    # the command line is taken whatever its name (the decoder says if it cannot read it).
    assert found == [photos / "a.jpg", photos / "link.jpg", given]
    assert [f.rel for f in walk(tmp_path, DEFAULT_FILTER)] == ["outside/b.jpg", "photos/a.jpg"]
    with pytest.raises(UsageError, match="does not exist"):
        list(iter_photos([tmp_path / "nowhere"]))
