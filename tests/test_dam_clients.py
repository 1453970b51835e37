"""What real photo managers make of musiqd's writes: darktable and GNOME tracker read the photos back.

exiftool (the other test files) checks what a file holds. Photo managers apply their own precedence rules
on top (see tests/dam_clients.py): darktable takes keywords from lr:hierarchicalSubject when a photo has
any and ignores dc:subject then, and a darktable sidecar replaces every keyword and the stars of the
photo. So each test reads the photo with the manager before musiqd writes and after, and asserts that the
owner's keywords and stars are still shown, next to musiqd's stars and keyword.

The owner's keyword ``mine`` is set beforehand as photo managers and tools store keywords: flat in XMP
``dc:subject`` (most tools), only as IPTC Keywords (older tools, cameras), and as Lightroom writes it
(``people|mine`` in ``lr:hierarchicalSubject`` and the leaf ``mine`` in ``dc:subject``).

CI installs the managers with apt (``darktable``, ``tracker``, ``tracker-extract``, ``dbus-daemon``);
without them these tests are skipped, with the package to install as the reason.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import imagegen
import pytest
from dam_clients import (
    DarktableView,
    TrackerView,
    darktable_missing,
    darktable_read,
    tracker_missing,
    tracker_read,
)
from imagegen import exiftool
from test_metadata_write import record

from musiq_daemon.metadata.writer import WritePolicy, write_score

pytestmark = pytest.mark.skipif(shutil.which("exiftool") is None, reason="exiftool writes the owner's tags")
needs_darktable = pytest.mark.skipif(darktable_missing() is not None, reason=darktable_missing() or "")
needs_tracker = pytest.mark.skipif(tracker_missing() is not None, reason=tracker_missing() or "")

MUSIQ_TAG = "MUSIQ|koniq|musiq-koniq-4"  # lr:hierarchicalSubject, as darktable shows it
MUSIQ_KEYWORD = "musiq-koniq-4"  # dc:subject, as tracker shows it
MUSIQ_STARS = 4  # record(score=3.5): 3.5 is in the 3.4..3.8 bucket
DARKTABLE_UNRATED = 1  # darktable's stars for a photo without any (its default, pinned by dam_clients)

# How the owner keyworded the photo: exiftool assignments, and the tag darktable shows for it.
OWNER_KEYWORDS: dict[str, tuple[list[str], str]] = {
    "xmp-dc": (["-XMP-dc:Subject=mine"], "mine"),
    "iptc": (["-IPTC:Keywords=mine"], "mine"),
    "lightroom": (["-XMP-dc:Subject=mine", "-XMP-lr:HierarchicalSubject=people|mine"], "people|mine"),
}
NAMINGS = ["append", "replace"]
SUFFIXES = {"jpeg": ".jpg", "dng": ".dng"}


class Originals:
    """Photos made once per module, and each manager's view of them before musiqd writes (darktable's
    takes a second: tests that start from the same photo share it)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.dt_config = root / "darktable-config"  # shared: the calls run one after the other
        self._photos: dict[tuple[str, str, int | None], Path] = {}
        self._darktable: dict[Path, DarktableView] = {}
        self._tracker: dict[Path, TrackerView] = {}

    def photo(self, kind: str, keywords: str, *, stars: int | None = None) -> Path:
        """A camera photo (``kind``: jpeg or dng) keyworded by the owner, with the owner's stars if any."""
        key = (kind, keywords, stars)
        if key not in self._photos:
            folder = self.root / f"{kind}-{keywords}-{stars}"
            folder.mkdir()
            path = folder / f"IMG_0001{SUFFIXES[kind]}"
            if kind == "jpeg":
                imagegen.make_jpeg(path, 480, 320)
            else:
                imagegen.make_dng(path, 320, 240, preview=(160, 120))
            args = list(OWNER_KEYWORDS[keywords][0])
            if stars is not None:
                args += [f"-XMP-xmp:Rating={stars}"]
            exiftool("-q", "-overwrite_original", *args, path)
            self._photos[key] = path
        return self._photos[key]

    def darktable(self, photo: Path) -> DarktableView:
        if photo not in self._darktable:
            self._darktable[photo] = darktable_read(photo, self.root / "darktable", configdir=self.dt_config)
        return self._darktable[photo]

    def tracker(self, photo: Path) -> TrackerView:
        if photo not in self._tracker:
            self._tracker[photo] = tracker_read(photo)
        return self._tracker[photo]


@pytest.fixture(scope="module")
def originals(tmp_path_factory: pytest.TempPathFactory) -> Originals:
    return Originals(tmp_path_factory.mktemp("dam-originals"))


def scored(original: Path, tmp_path: Path, policy: WritePolicy) -> tuple[Path, Any]:
    """A copy of ``original`` scored by musiqd (3.5, koniq) with ``policy``."""
    (tmp_path / "photos").mkdir(exist_ok=True)
    photo = tmp_path / "photos" / original.name
    shutil.copy2(original, photo)
    return photo, write_score(photo, record(score=3.5), policy)


def assert_sidecar_tags(view: DarktableView, naming: str, owner_tag: str) -> None:
    """The tags darktable shows once musiqd wrote a sidecar for a photo the owner tagged ``owner_tag``.

    An appended sidecar replaces the photo's keywords, so it must hold the owner's next to musiqd's:
    exactly those two, as the owner has them (``mine`` becoming ``people|mine`` and ``mine`` would
    double a tag). A Lightroom-named one is read as a Lightroom import: each entry of its ``dc:subject``
    and ``lr:hierarchicalSubject`` is added as a tag, so flat leaves (``musiq-koniq-4``, ``mine``) may
    show next to the hierarchical tags; the owner's must stay and musiqd's must show.
    """
    if naming == "append":
        assert view.user_tags == sorted([owner_tag, MUSIQ_TAG])
    else:
        tags = set(view.user_tags)
        assert {owner_tag, MUSIQ_TAG} <= tags, view.user_tags
        assert tags - {owner_tag, MUSIQ_TAG} <= {MUSIQ_KEYWORD, owner_tag.rpartition("|")[2]}, view.user_tags


def darktable_after(photo: Path, tmp_path: Path, originals: Originals) -> DarktableView:
    return darktable_read(photo, tmp_path / "darktable", configdir=originals.dt_config)


# --- embedded writes ----------------------------------------------------------------------------------------


@needs_darktable
@pytest.mark.parametrize("keywords", OWNER_KEYWORDS)
def test_darktable_shows_embedded_stars_musiq_tag_and_owner_keyword(
    keywords: str, originals: Originals, tmp_path: Path
) -> None:
    original = originals.photo("jpeg", keywords)
    owner_tag = OWNER_KEYWORDS[keywords][1]
    before = originals.darktable(original)
    assert (before.stars, before.rejected, before.user_tags) == (DARKTABLE_UNRATED, False, [owner_tag])

    photo, result = scored(original, tmp_path, WritePolicy(mode="embed"))
    assert result.target == "embedded" and result.rating_written == MUSIQ_STARS

    after = darktable_after(photo, tmp_path, originals)
    assert (after.stars, after.rejected) == (MUSIQ_STARS, False)
    assert after.user_tags == sorted([owner_tag, MUSIQ_TAG])


@needs_tracker
@pytest.mark.parametrize("keywords", OWNER_KEYWORDS)
def test_tracker_reads_embedded_rating_and_keywords(
    keywords: str, originals: Originals, tmp_path: Path
) -> None:
    original = originals.photo("jpeg", keywords)
    assert originals.tracker(original) == TrackerView(rating=None, keywords=["mine"])

    photo, result = scored(original, tmp_path, WritePolicy(mode="embed"))
    assert result.rating_written == MUSIQ_STARS

    assert tracker_read(photo) == TrackerView(rating=MUSIQ_STARS, keywords=sorted(["mine", MUSIQ_KEYWORD]))


# --- sidecars -----------------------------------------------------------------------------------------------


@needs_darktable
@pytest.mark.parametrize("naming", NAMINGS)
@pytest.mark.parametrize(
    ("kind", "keywords"),
    [("jpeg", k) for k in OWNER_KEYWORDS] + [("dng", "xmp-dc"), ("dng", "lightroom")],
)
def test_darktable_shows_sidecar_stars_musiq_tag_and_owner_keyword(
    kind: str, keywords: str, naming: str, originals: Originals, tmp_path: Path
) -> None:
    """darktable reads the appended sidecar (IMG_0001.jpg.xmp) at import, and then takes all keywords
    and the stars from it. A Lightroom-named IMG_0001.xmp is read only the first time the photo is opened
    in the darkroom (darktable-cli's export does that), as a Lightroom import (see
    :func:`assert_sidecar_tags`)."""
    original = originals.photo(kind, keywords)
    owner_tag = OWNER_KEYWORDS[keywords][1]
    before = originals.darktable(original)
    assert (before.stars, before.user_tags) == (DARKTABLE_UNRATED, [owner_tag])

    photo, result = scored(original, tmp_path, WritePolicy(mode="sidecar", sidecar_naming=naming))
    name = photo.name + ".xmp" if naming == "append" else photo.stem + ".xmp"
    assert result.target == "sidecar" and result.path == photo.with_name(name)
    assert result.rating_written == MUSIQ_STARS

    after = darktable_after(photo, tmp_path, originals)
    assert (after.stars, after.rejected) == (MUSIQ_STARS, False)
    assert_sidecar_tags(after, naming, owner_tag)


@needs_tracker
@pytest.mark.parametrize("naming", NAMINGS)
def test_tracker_reads_a_lightroom_named_sidecar_of_a_jpeg_without_xmp(
    naming: str, originals: Originals, tmp_path: Path
) -> None:
    """tracker reads IMG_0001.xmp, and only for a JPEG without embedded XMP (here: IPTC keywords only);
    it never reads IMG_0001.jpg.xmp, so with that name it must show what it showed before."""
    original = originals.photo("jpeg", "iptc")
    before = originals.tracker(original)
    assert before == TrackerView(rating=None, keywords=["mine"])

    photo, _ = scored(original, tmp_path, WritePolicy(mode="sidecar", sidecar_naming=naming))

    after = tracker_read(photo)
    if naming == "replace":
        assert after == TrackerView(rating=MUSIQ_STARS, keywords=sorted(["mine", MUSIQ_KEYWORD]))
    else:
        assert after == before


# --- the owner's stars --------------------------------------------------------------------------------------


@needs_darktable
@pytest.mark.parametrize(
    ("kind", "mode", "naming"),
    [
        pytest.param("jpeg", "embed", "append", id="jpeg-embed"),
        *[pytest.param(k, "sidecar", n, id=f"{k}-sidecar-{n}") for k in ("jpeg", "dng") for n in NAMINGS],
    ],
)
def test_darktable_keeps_the_owners_five_stars(
    kind: str, mode: str, naming: str, originals: Originals, tmp_path: Path
) -> None:
    original = originals.photo(kind, "xmp-dc", stars=5)
    before = originals.darktable(original)
    assert (before.stars, before.user_tags) == (5, ["mine"])

    photo, result = scored(original, tmp_path, WritePolicy(mode=mode, sidecar_naming=naming))
    assert result.rating_written is None  # the stars are the owner's

    after = darktable_after(photo, tmp_path, originals)
    assert (after.stars, after.rejected) == (5, False)
    if mode == "embed":
        assert after.user_tags == sorted(["mine", MUSIQ_TAG])
    else:
        assert_sidecar_tags(after, naming, "mine")


@needs_darktable
def test_darktable_keeps_its_own_sidecar_stars_and_tags(originals: Originals, tmp_path: Path) -> None:
    """A RAW the owner rated and tagged in darktable: musiqd updates darktable's IMG_0001.dng.xmp."""
    (tmp_path / "photos").mkdir()
    raw = imagegen.make_dng(tmp_path / "photos" / "IMG_0001.dng", 320, 240, preview=(160, 120))
    sidecar = raw.with_name("IMG_0001.dng.xmp")
    sidecar.write_text(imagegen.darktable_sidecar(raw.name, rating=5))
    before = darktable_after(raw, tmp_path, originals)
    assert (before.stars, before.user_tags) == (5, ["animals|birds"])

    result = write_score(raw, record(score=3.5), WritePolicy(mode="sidecar", sidecar_naming="replace"))
    assert result.path == sidecar and result.rating_written is None

    after = darktable_after(raw, tmp_path, originals)
    assert (after.stars, after.rejected) == (5, False)
    assert after.user_tags == sorted(["animals|birds", MUSIQ_TAG])
    assert sorted(p.name for p in raw.parent.iterdir()) == ["IMG_0001.dng", "IMG_0001.dng.xmp"]


@needs_tracker
def test_tracker_keeps_the_owners_five_stars(originals: Originals, tmp_path: Path) -> None:
    original = originals.photo("jpeg", "xmp-dc", stars=5)
    assert originals.tracker(original) == TrackerView(rating=5, keywords=["mine"])
    photo, _ = scored(original, tmp_path, WritePolicy(mode="embed"))
    assert tracker_read(photo) == TrackerView(rating=5, keywords=sorted(["mine", MUSIQ_KEYWORD]))
