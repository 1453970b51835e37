"""The metadata musiqd owns, and the rules for touching what it does not own.

Pure functions on the exiv2 containers of one photo (``exiv2.XmpData``, ``exiv2.ExifData``): no files are
read or written here (see :mod:`musiq_daemon.metadata.writer`).

Namespace
---------
URI ``http://ns.musiqd.org/xmp/1.0/``, prefix ``musiqd``. Each model's values live in their own struct
property named after the model id, so several models score one photo without clobbering each other::

    musiqd:koniq  (struct)
        musiqd:Score             "3.412"   reported scale, fixed 3 decimals, '.' decimal point
        musiqd:RawScore          "60.300"  the model's own output (MOS 0..100, AVA mean 1..10), 3 decimals
        musiqd:Model             "koniq"
        musiqd:ModelVersion      sha256 prefix of the source checkpoint
        musiqd:Variant           "dynamic-int8", "fp32", ...
        musiqd:ScaleMin          "1"       the reported scale (shortest exact form)
        musiqd:ScaleMax          "5"
        musiqd:ResolutionPolicy  "max_side=1024" or "full" (it changes the score)
        musiqd:ScoredAt          ISO 8601 with zone, "2024-05-01T10:00:00+02:00"
        musiqd:ContentHash       hash of the compressed image data the score belongs to
    musiqd:RatingWritten         the stars musiqd wrote last ("4"): tells musiqd's stars from the user's
    musiqd:RatingModel           the model whose score those stars come from

Every value is text, so readers never meet a locale's decimal comma or a float rounding surprise. A model
id must be a lower-case XML name (``[a-z][a-z0-9_]*``) because it names a property.

exiftool reads the namespace without configuration (writing it would need a user config defining it) and
flattens struct fields into tag names: the model id capitalised + the field, ``XMP-musiqd:KoniqScore``,
``XMP-musiqd:KoniqModelVersion``, ``XMP-musiqd:AvaScore``, plus ``XMP-musiqd:RatingWritten`` and
``XMP-musiqd:RatingModel``; ``-struct`` shows ``XMP-musiqd:Koniq`` as one structure. It shows
``ScoredAt`` in EXIF date style (``2024:05:01 10:00:00+02:00``) like every XMP date. Filter with e.g.::

    exiftool -r -if '$XMP-musiqd:KoniqScore >= 3.5' -p '$Directory/$FileName $XMP-musiqd:KoniqScore' DIR
    exiftool -r -ext xmp -if '$XMP-musiqd:AvaScore > 6' -p '$FileName' DIR      # sidecars

``MicrosoftPhoto:Rating`` appears as ``XMP-microsoft:RatingPercent``; it is written with the namespace URI
Windows itself writes (``http://ns.microsoft.com/photo/1.0/``), on which exiftool notes a harmless
"[minor] Fixed incorrect URI" warning, as it does for photos rated in Windows (``-q -q`` silences it).

Stars
-----
A model's score falls into a star bucket through four boundaries on its reported scale (for 2, 3, 4 and
5 stars; below the first is 1 star, a boundary value itself belongs to the upper bucket). The defaults in
:data:`DEFAULT_STAR_THRESHOLDS` are a starting point, not a calibration: set them per collection.

Stars are the user's. ``xmp:Rating`` is written only when musiqd owns it:

* no ``musiqd:RatingWritten`` yet and every rating field is absent or 0 (unrated), or
* ``xmp:Rating`` still equals ``musiqd:RatingWritten`` and every mirror that is present agrees.

Anything else (other stars, a clear to 0 after musiqd wrote stars, -1 = rejected, an unreadable value)
belongs to the user: no rating field is touched and ``musiqd:RatingWritten`` is left as the record of what
musiqd wrote last. A user who sets the stars back to exactly that value hands them back. musiqd never
writes -1 or 0.

Mirrors, under the same ownership rule, in embedded metadata only: EXIF IFD0 ``Rating`` (0x4746) and
``RatingPercent`` (0x4749: 1->1, 2->25, 3->50, 4->75, 5->99) when the photo already has EXIF (musiqd
never adds an EXIF block to a photo that has none), and ``MicrosoftPhoto:Rating`` (percent).

Keywords
--------
Each model's bucket is a keyword that every photo tool can filter on:

* ``lr:hierarchicalSubject`` (Bag, separator ``|``): ``MUSIQ|koniq|musiq-koniq-4``
* ``dc:subject`` (Bag): ``musiq-koniq-4``
* ``digiKam:TagsList`` (Seq, separator ``/``) and ``MicrosoftPhoto:LastKeywordXMP`` (Bag, ``/``):
  ``MUSIQ/koniq/musiq-koniq-4``, only when the container already exists: digiKam reads the first
  non-empty container in a fixed order (TagsList first), so a keyword missing there would be invisible.

The leaf repeats the model and the stars (not a bare ``4``) because ``dc:subject`` is flat, and because
Lightroom matches ``dc:subject`` entries to hierarchy leaves: a flat entry that is not a leaf becomes a
second, top-level keyword. Re-scoring removes only musiqd's own keywords of that model (exactly
``MUSIQ|<model>|musiq-<model>-<n>``, ``musiq-<model>-<n>`` and ``MUSIQ/<model>/musiq-<model>-<n>``; a
user's ``MUSIQ|koniq|favourite`` stays) and appends the new one; the user's keywords keep their order, and
a keyword that is already right stays where it is. Parents that Lightroom adds to ``dc:subject`` on export
(``MUSIQ``, ``koniq``) are left alone: they stay true for any bucket.

Best of burst
-------------
``musiqd cull`` marks the best-scored photo of each burst (two or more near-identical shots) with
``MUSIQ|best-of-burst`` in the same containers and by the same rules as the bucket keywords (``best-of-burst``
in ``dc:subject``, ``MUSIQ/best-of-burst`` in the digiKam and Microsoft containers that exist), and takes it
away again when a better shot joins the burst. ``musiqd:BestOfBurstWritten`` records what musiqd did last
(``True``: added, ``False``: removed). The keyword follows the ownership rule of the stars: musiqd adds or
removes it only while the photo still shows what musiqd left (no record and no such keyword, the keyword in
every container after ``True``, in none after ``False``). A user who removed musiqd's keyword, or added it
by hand, owns it from then on. A photo that was never a burst's best is never written.
"""

from __future__ import annotations

import contextlib
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

import exiv2

# Before anything here calls libexiv2: its log messages are routed, never printed raw.
from musiq_daemon import native_log as _native_log  # noqa: F401

# The star thresholds' rules live with the write policy (loaded without exiv2); they are this module's too.
from musiq_daemon.metadata.policy import DEFAULT_STAR_THRESHOLDS as DEFAULT_STAR_THRESHOLDS
from musiq_daemon.metadata.policy import Thresholds as Thresholds
from musiq_daemon.metadata.policy import check_model_id as check_model_id
from musiq_daemon.metadata.policy import check_thresholds as check_thresholds

NAMESPACE_URI: Final = "http://ns.musiqd.org/xmp/1.0/"
NAMESPACE_PREFIX: Final = "musiqd"

# Field names inside a model's struct, in the order they are written.
SCORE_FIELDS: Final = (
    "Score",
    "RawScore",
    "Model",
    "ModelVersion",
    "Variant",
    "ScaleMin",
    "ScaleMax",
    "ResolutionPolicy",
    "ScoredAt",
    "ContentHash",
)
# When the score was computed is history, not state: a re-score with the same result must not rewrite.
VOLATILE_FIELDS: Final = frozenset({"ScoredAt"})

RATING_WRITTEN_KEY: Final = f"Xmp.{NAMESPACE_PREFIX}.RatingWritten"
RATING_MODEL_KEY: Final = f"Xmp.{NAMESPACE_PREFIX}.RatingModel"
XMP_RATING_KEY: Final = "Xmp.xmp.Rating"
MS_RATING_KEY: Final = "Xmp.MicrosoftPhoto.Rating"
EXIF_RATING_KEY: Final = "Exif.Image.Rating"
EXIF_RATING_PERCENT_KEY: Final = "Exif.Image.RatingPercent"

SUBJECT_KEY: Final = "Xmp.dc.subject"
HIERARCHICAL_KEY: Final = "Xmp.lr.hierarchicalSubject"
TAGS_LIST_KEY: Final = "Xmp.digiKam.TagsList"
MS_KEYWORDS_KEY: Final = "Xmp.MicrosoftPhoto.LastKeywordXMP"

KEYWORD_ROOT: Final = "MUSIQ"
BEST_WRITTEN_KEY: Final = f"Xmp.{NAMESPACE_PREFIX}.BestOfBurstWritten"
BEST_LEAF: Final = "best-of-burst"

# EXIF RatingPercent / MicrosoftPhoto:Rating for 1..5 stars, as Windows writes them.
_PERCENT: Final = {1: 1, 2: 25, 3: 50, 4: 75, 5: 99}

_namespace_lock = threading.Lock()
_namespace_ready = False


def register_namespace() -> None:
    """Initialise the XMP toolkit and register the musiqd namespace (once per process, thread-safe: the
    toolkit's namespace registry is global and not safe to modify concurrently)."""
    global _namespace_ready
    with _namespace_lock:
        if not _namespace_ready:
            exiv2.XmpParser.initialize()
            exiv2.XmpProperties.registerNs(NAMESPACE_URI, NAMESPACE_PREFIX)
            # The reference from a JPEG's standard XMP to its extended XMP (written when a packet is split).
            with contextlib.suppress(exiv2.Exiv2Error):
                exiv2.XmpProperties.registerNs("http://ns.adobe.com/xmp/note/", "xmpNote")
            _namespace_ready = True


def stars_for(score: float, thresholds: Thresholds) -> int:
    """1..5 stars: 1 plus the number of boundaries at or below ``score``."""
    return 1 + sum(score >= t for t in thresholds)


def rating_percent(stars: int) -> int:
    """The percent value Windows uses for ``stars`` (1..5)."""
    return _PERCENT[stars]


def stars_from_percent(percent: int) -> int:
    """Stars for a percent rating, with the ranges Windows uses when it reads one (0 and below unchanged)."""
    if percent <= 0:
        return percent
    for stars, upper in ((1, 12), (2, 37), (3, 62), (4, 87)):
        if percent <= upper:
            return stars
    return 5


def format_number(value: float, decimals: int) -> str:
    """Fixed-point text with a '.' decimal point whatever the locale."""
    return f"{value:.{decimals}f}"


def format_scale(value: float) -> str:
    """A scale bound in its shortest exact form: "1", "5", "10", "0.5"."""
    return f"{value:g}"


@dataclass(frozen=True)
class ModelScore:
    """One model's values as they are written, already formatted as text."""

    model_id: str
    fields: Mapping[str, str]  # SCORE_FIELDS -> text

    @property
    def struct_key(self) -> str:
        return struct_key(self.model_id)


def struct_key(model_id: str) -> str:
    """The exiv2 key of a model's struct, e.g. ``Xmp.musiqd.koniq``."""
    return f"Xmp.{NAMESPACE_PREFIX}.{model_id}"


def field_key(model_id: str, name: str) -> str:
    """The exiv2 key of one field of a model's struct, e.g. ``Xmp.musiqd.koniq/musiqd:Score``."""
    return f"{struct_key(model_id)}/{NAMESPACE_PREFIX}:{name}"


@dataclass(frozen=True)
class BucketKeyword:
    """musiqd's keyword for one model's star bucket, in each container's spelling."""

    model_id: str
    stars: int

    @property
    def leaf(self) -> str:
        return f"musiq-{self.model_id}-{self.stars}"

    @property
    def hierarchical(self) -> str:
        return f"{KEYWORD_ROOT}|{self.model_id}|{self.leaf}"

    @property
    def slashed(self) -> str:
        return f"{KEYWORD_ROOT}/{self.model_id}/{self.leaf}"


def best_keyword(container_key: str) -> str:
    """The best-of-burst keyword as ``container_key`` spells it."""
    if container_key == SUBJECT_KEY:
        return BEST_LEAF
    return f"{KEYWORD_ROOT}{'|' if container_key == HIERARCHICAL_KEY else '/'}{BEST_LEAF}"


def is_own_keyword(container_key: str, keyword: str, model_id: str) -> bool:
    """Whether ``keyword`` in ``container_key`` is a musiqd bucket keyword of ``model_id``: the exact
    pattern, any stars, so that a user's own keyword under a ``MUSIQ`` branch is never taken for ours."""
    leaf = rf"musiq-{re.escape(model_id)}-\d+"
    if container_key == SUBJECT_KEY:
        return re.fullmatch(leaf, keyword) is not None
    separator = re.escape("|" if container_key == HIERARCHICAL_KEY else "/")
    return (
        re.fullmatch(rf"{KEYWORD_ROOT}{separator}{re.escape(model_id)}{separator}{leaf}", keyword) is not None
    )


# --- typed access to exiv2 containers (exiv2 itself is untyped) ------------------------------------------


def get_text(data: Any, key: str) -> str | None:
    """The value of a simple property or tag as text, None when absent."""
    if key not in data:
        return None
    return str(data[key].toString())


def get_items(xmp: Any, key: str) -> list[str] | None:
    """The items of an XMP array, None when absent."""
    if key not in xmp:
        return None
    datum = xmp[key]
    return [str(datum.toString(i)) for i in range(int(datum.count()))]


def _array_type(xmp: Any, key: str, default: Any) -> Any:
    if key in xmp:
        type_id = xmp[key].typeId()
        if type_id in (exiv2.TypeId.xmpBag, exiv2.TypeId.xmpSeq):
            return type_id
    return default


def set_items(xmp: Any, key: str, items: Sequence[str], default_type: Any) -> None:
    """Replace an XMP array's items, keeping its array type (Bag/Seq) when it exists."""
    value = exiv2.XmpArrayValue(_array_type(xmp, key, default_type))
    for item in items:
        value.read(item)
    xmp[key] = value


def set_text(xmp: Any, key: str, text: str) -> None:
    xmp[key] = exiv2.XmpTextValue(text)


def _parse_int(text: str | None) -> int | None:
    """An integer rating; None for absent; raises ValueError for text that is not a whole number."""
    if text is None:
        return None
    number = float(text.strip())
    if not number.is_integer():
        raise ValueError(text)
    return int(number)


# --- the model's values ------------------------------------------------------------------------------------


def read_model_fields(xmp: Any, model_id: str) -> dict[str, str]:
    """The fields of a model's struct that are present."""
    out: dict[str, str] = {}
    for name in SCORE_FIELDS:
        text = get_text(xmp, field_key(model_id, name))
        if text is not None:
            out[name] = text
    return out


def model_fields_differ(xmp: Any, score: ModelScore) -> bool:
    """Whether writing ``score`` would change anything but its volatile fields."""
    current = read_model_fields(xmp, score.model_id)
    return any(
        current.get(name) != text for name, text in score.fields.items() if name not in VOLATILE_FIELDS
    )


def write_model_fields(xmp: Any, score: ModelScore) -> None:
    """Write every field of the model's struct (creating the struct), other models untouched."""
    if score.struct_key not in xmp:
        struct = exiv2.XmpTextValue()
        struct.setXmpStruct()
        xmp.add(exiv2.XmpKey(score.struct_key), struct)
    for name in SCORE_FIELDS:
        if name in score.fields:
            set_text(xmp, field_key(score.model_id, name), score.fields[name])


# --- stars -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RatingState:
    """The rating fields of one photo, as stars (None = unreadable; absent fields are left out)."""

    xmp_rating: int | None
    has_xmp_rating: bool
    mirrors: tuple[int | None, ...]  # MicrosoftPhoto:Rating, EXIF Rating, EXIF RatingPercent (as stars)
    written: int | None  # musiqd:RatingWritten
    has_written: bool

    def owned(self, inherited: Sequence[int | None] = ()) -> bool:
        """Whether musiqd may write the stars (see the module docstring).

        ``inherited``: rating values of the original photo, which decide for a sidecar that has no
        rating of its own (an in-camera rating of a RAW is the user's).
        """
        if not self.has_written:
            values = [*self.mirrors, *(() if self.has_xmp_rating else inherited)]
            if self.has_xmp_rating:
                values.append(self.xmp_rating)
            return all(v == 0 for v in values)
        if self.written is None or not self.has_xmp_rating or self.xmp_rating != self.written:
            return False
        return all(v == self.written for v in self.mirrors)


def stars_value(text: str | None, *, percent: bool) -> int | None:
    try:
        value = _parse_int(text)
    except ValueError:
        return None
    if value is None:
        return None
    return stars_from_percent(value) if percent else value


def read_rating_state(xmp: Any, exif: Mapping[str, int] | None) -> RatingState:
    """The rating fields of ``xmp`` (and, for embedded metadata, the EXIF rating entries in ``exif``:
    key -> value, present entries only)."""
    rating_text = get_text(xmp, XMP_RATING_KEY)
    written_text = get_text(xmp, RATING_WRITTEN_KEY)
    ms_text = get_text(xmp, MS_RATING_KEY)
    mirrors: list[int | None] = [] if ms_text is None else [stars_value(ms_text, percent=True)]
    if exif is not None:
        if EXIF_RATING_KEY in exif:
            mirrors.append(exif[EXIF_RATING_KEY])
        if EXIF_RATING_PERCENT_KEY in exif:
            mirrors.append(stars_from_percent(exif[EXIF_RATING_PERCENT_KEY]))
    return RatingState(
        xmp_rating=stars_value(rating_text, percent=False),
        has_xmp_rating=rating_text is not None,
        mirrors=tuple(mirrors),
        written=stars_value(written_text, percent=False),
        has_written=written_text is not None,
    )


def embedded_ratings(xmp: Any, exif: Mapping[str, int] | None) -> tuple[int | None, ...]:
    """Every rating value a photo carries, as stars (for :meth:`RatingState.owned`'s ``inherited``)."""
    state = read_rating_state(xmp, exif)
    return ((state.xmp_rating,) if state.has_xmp_rating else ()) + state.mirrors


def write_rating(xmp: Any, exif: dict[str, int] | None, stars: int, model_id: str, *, mirrors: bool) -> bool:
    """Set the stars (and, with ``mirrors``, MicrosoftPhoto:Rating and the EXIF rating entries present in
    ``exif``, which is updated: EXIF entries are patched where they stand, never added). Returns whether
    anything changed. The caller has checked ownership."""
    if not 1 <= stars <= 5:
        raise ValueError(f"stars must be 1..5, got {stars}")
    wanted = [(XMP_RATING_KEY, str(stars)), (RATING_WRITTEN_KEY, str(stars)), (RATING_MODEL_KEY, model_id)]
    if mirrors:
        wanted.append((MS_RATING_KEY, str(rating_percent(stars))))
    changed = False
    for key, text in wanted:
        if get_text(xmp, key) != text:
            set_text(xmp, key, text)
            changed = True
    if mirrors and exif is not None:
        for key, value in ((EXIF_RATING_KEY, stars), (EXIF_RATING_PERCENT_KEY, rating_percent(stars))):
            if key in exif and exif[key] != value:
                exif[key] = value
                changed = True
    return changed


# --- keywords ----------------------------------------------------------------------------------------------


def _replace_own(items: Iterable[str], wanted: str, is_own: Any) -> list[str]:
    """Drop own keywords other than ``wanted``, keep everything else in order, append ``wanted`` if new."""
    out: list[str] = []
    for item in items:
        if item == wanted:
            if wanted not in out:
                out.append(item)
        elif not is_own(item):
            out.append(item)
    if wanted not in out:
        out.append(wanted)
    return out


def owner_keywords(xmp: Any, model_id: str | None = None) -> dict[str, list[str]]:
    """The owner's keywords in each container that exists (musiqd's own bucket keywords of ``model_id``,
    or of any model when None, left out)."""
    out: dict[str, list[str]] = {}
    for key in KEYWORD_CONTAINERS:
        items = get_items(xmp, key)
        if items is not None:
            out[key] = [i for i in items if not _is_any_own(key, i, model_id)]
    return out


def is_any_own_keyword(key: str, item: str, model_id: str | None = None) -> bool:
    """:func:`is_own_keyword` for ``model_id``, or for any model when None. The best-of-burst keyword is not
    one of them: a user may have a keyword of that name, and only a write of it may change it."""
    return _is_any_own(key, item, model_id)


def _is_any_own(key: str, item: str, model_id: str | None) -> bool:
    if model_id is not None:
        return is_own_keyword(key, item, model_id)
    parts = re.split(r"[|/]", item)
    return (
        bool(parts)
        and re.fullmatch(r"musiq-[a-z][a-z0-9_]*-\d+", parts[-1]) is not None
        and (len(parts) == 1 or (len(parts) == 3 and parts[0] == KEYWORD_ROOT))
    )


def carried_keywords(existing: Mapping[str, list[str]], key: str) -> list[str]:
    """The owner's keywords a new ``key`` container starts with, so that a photo manager that prefers it
    (darktable and digiKam prefer ``lr:hierarchicalSubject`` to ``dc:subject``) still shows them all:
    ``lr:hierarchicalSubject`` takes digiKam's tags (``/`` becomes ``|``), else the flat keywords;
    ``dc:subject`` takes the leaves of the hierarchical tags."""
    tags = existing.get(TAGS_LIST_KEY) or []
    if key == HIERARCHICAL_KEY:
        if tags:
            return list(dict.fromkeys(t.replace("/", "|") for t in tags))
        return list(dict.fromkeys(existing.get(SUBJECT_KEY) or existing.get(MS_KEYWORDS_KEY) or []))
    if key == SUBJECT_KEY:
        source = existing.get(HIERARCHICAL_KEY) or [t.replace("/", "|") for t in tags]
        return list(dict.fromkeys(item.rsplit("|", 1)[-1] for item in source))
    return []


def write_keywords(xmp: Any, keyword: BucketKeyword) -> bool:
    """Put ``keyword`` into the keyword containers (see the module docstring); a container created now
    first gets the owner's keywords from the others (:func:`carried_keywords`). Returns whether anything
    changed."""
    containers: list[tuple[str, str, Any, bool]] = [
        (HIERARCHICAL_KEY, keyword.hierarchical, exiv2.TypeId.xmpBag, True),
        (SUBJECT_KEY, keyword.leaf, exiv2.TypeId.xmpBag, True),
        (TAGS_LIST_KEY, keyword.slashed, exiv2.TypeId.xmpSeq, False),
        (MS_KEYWORDS_KEY, keyword.slashed, exiv2.TypeId.xmpBag, False),
    ]
    existing = owner_keywords(xmp)
    changed = False
    for key, wanted, default_type, create in containers:
        current = get_items(xmp, key)
        if current is None and not create:
            continue
        start = current if current is not None else carried_keywords(existing, key)
        items = _replace_own(start, wanted, lambda item, key=key: is_own_keyword(key, item, keyword.model_id))
        if items != current:
            set_items(xmp, key, items, default_type)
            changed = True
    return changed


@dataclass(frozen=True)
class BestApplied:
    """What :func:`apply_best_of_burst` did."""

    changed: bool
    ours: bool  # musiqd owns the keyword's state now (False: the user's, left as it was)


def apply_best_of_burst(xmp: Any, best: bool, *, known: bool | None = None) -> BestApplied:
    """Add (``best``) or take away the best-of-burst keyword in ``xmp`` when musiqd owns it (see the module
    docstring), recording what it did in ``musiqd:BestOfBurstWritten``. ``known``: the index says musiqd
    added it last, which recognises musiqd's keyword in a file a photo manager rewrote without the
    record."""
    record = get_text(xmp, BEST_WRITTEN_KEY)
    present = [
        best_keyword(key) in items for key in KEYWORD_CONTAINERS if (items := get_items(xmp, key)) is not None
    ]
    in_all, in_any = bool(present) and all(present), any(present)
    if record is None:
        owned = not in_any or (known is True and in_all)
        if not best and not in_any:
            return BestApplied(False, True)  # never a burst's best: nothing to write
    else:
        owned = (record == "True" and in_all) or (record == "False" and not in_any)
    if not owned:
        return BestApplied(False, False)
    changed = False
    for key, default_type, create in (
        (HIERARCHICAL_KEY, exiv2.TypeId.xmpBag, True),
        (SUBJECT_KEY, exiv2.TypeId.xmpBag, True),
        (TAGS_LIST_KEY, exiv2.TypeId.xmpSeq, False),
        (MS_KEYWORDS_KEY, exiv2.TypeId.xmpBag, False),
    ):
        current = get_items(xmp, key)
        wanted = best_keyword(key)
        if best:
            if current is None and not create:
                continue
            start = current if current is not None else carried_keywords(owner_keywords(xmp), key)
            items = start if wanted in start else [*start, wanted]
        else:
            if current is None:
                continue
            items = [item for item in current if item != wanted]
        if items != current:
            if items:
                set_items(xmp, key, items, default_type)
            else:
                del xmp[key]  # it held only musiqd's keyword
            changed = True
    if record != str(best):
        set_text(xmp, BEST_WRITTEN_KEY, str(best))
        changed = True
    return BestApplied(changed, True)


def best_keyword_reads_back(xmp: Any, best: bool) -> bool:
    """Whether ``xmp`` shows the best-of-burst keyword as :func:`apply_best_of_burst` left it."""
    has = BEST_LEAF in (get_items(xmp, SUBJECT_KEY) or []) and best_keyword(HIERARCHICAL_KEY) in (
        get_items(xmp, HIERARCHICAL_KEY) or []
    )
    none = not any(best_keyword(key) in (get_items(xmp, key) or []) for key in KEYWORD_CONTAINERS)
    return get_text(xmp, BEST_WRITTEN_KEY) == str(best) and (has if best else none)


# --- one model's score, applied ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Applied:
    """What :func:`apply_score` did."""

    changed: bool  # anything but the volatile fields differs: the file must be written
    rating_written: int | None  # the stars musiqd holds in the file now, None when not musiqd's
    # After a best-of-burst write: whether musiqd's keyword is there now (True), musiqd took it away or
    # never added it (False), or its state is the user's (None).
    best_written: bool | None = None


def apply_score(
    xmp: Any,
    exif: dict[str, int] | None,
    score: ModelScore,
    *,
    keyword: BucketKeyword | None,
    rating_stars: int | None,
    mirrors: bool,
    inherited: Sequence[int | None] = (),
    known_rating: int | None = None,
) -> Applied:
    """Bring one model's values, its bucket keyword and (when ``rating_stars`` is given and musiqd owns
    the stars) the rating up to date in ``xmp`` and ``exif`` (None for a sidecar).

    ``mirrors``: also keep MicrosoftPhoto:Rating and the EXIF copies (embedded metadata only).
    ``inherited``: the original photo's ratings, which decide ownership for a sidecar without a rating.
    ``known_rating``: the stars the index says musiqd wrote into this file last; they stay musiqd's when a
    photo manager rewrote the file without ``musiqd:RatingWritten`` (see :func:`_ours_by_record`).
    When nothing but the volatile fields would change, nothing at all is changed (``changed`` False).
    """
    changed = model_fields_differ(xmp, score)
    rating_written = None
    state = read_rating_state(xmp, exif if mirrors else None)
    if rating_stars is not None and (state.owned(inherited) or _ours_by_record(state, known_rating)):
        changed |= write_rating(xmp, exif, rating_stars, score.model_id, mirrors=mirrors)
        rating_written = rating_stars
    if keyword is not None:
        changed |= write_keywords(xmp, keyword)
    if changed:
        write_model_fields(xmp, score)
    return Applied(changed, rating_written)


def _ours_by_record(state: RatingState, known_rating: int | None) -> bool:
    """Stars musiqd wrote, in a file a photo manager rewrote without musiqd's record of them (darktable
    writes its own sidecar from the one musiqd made): the rating equals what the index says musiqd wrote,
    and no mirror disagrees."""
    if known_rating is None or state.has_written or not state.has_xmp_rating:
        return False
    return state.xmp_rating == known_rating and all(v == known_rating for v in state.mirrors)


# --- what a write must leave alone (for verification) ------------------------------------------------------

KEYWORD_CONTAINERS: Final = (SUBJECT_KEY, HIERARCHICAL_KEY, TAGS_LIST_KEY, MS_KEYWORDS_KEY)
_RATING_KEYS: Final = frozenset({XMP_RATING_KEY, MS_RATING_KEY, RATING_WRITTEN_KEY, RATING_MODEL_KEY})
_EXIF_RATING_KEYS: Final = frozenset({EXIF_RATING_KEY, EXIF_RATING_PERCENT_KEY})
# Tags whose values are positions in the file: a rewrite may legitimately move what they point to.
_POSITION_TAG = re.compile(
    r"(Offsets?|JPEGInterchangeFormat|SubIFDs|ExifTag|GPSTag|InteroperabilityTag|IFDPointer|XMLPacket)\Z"
)
_POSITION_KEYS: Final = frozenset({"Exif.MakerNote.Offset", "Exif.MakerNote.ByteOrder"})


# The namespace URIs of the keys above, for comparing packets read by :mod:`musiq_daemon.metadata.packet`.
_URIS: Final = {
    "xmp": "http://ns.adobe.com/xap/1.0/",
    "dc": "http://purl.org/dc/elements/1.1/",
    "lr": "http://ns.adobe.com/lightroom/1.0/",
    "digiKam": "http://www.digikam.org/ns/1.0/",
    "MicrosoftPhoto": "http://ns.microsoft.com/photo/1.0/",
    NAMESPACE_PREFIX: NAMESPACE_URI,
}


def packet_path(key: str) -> str:
    """An exiv2 key (``Xmp.dc.subject``) as a :func:`~musiq_daemon.metadata.packet.flatten` path."""
    _, prefix, name = key.split(".", 2)
    return _URIS[prefix] + name


_HAS_EXTENDED: Final = "http://ns.adobe.com/xmp/note/HasExtendedXMP"


def foreign_differences(
    before: Sequence[tuple[str, str]],
    after: Sequence[tuple[str, str]],
    model_ids: str | Sequence[str],
    *,
    rating_owned: bool,
    best_of_burst: bool = False,
) -> list[str]:
    """What a write of the scores of ``model_ids`` changed that is not musiqd's to change, comparing two
    packets flattened by :func:`~musiq_daemon.metadata.packet.flatten`: everything but those models'
    structs, musiqd's own bucket keywords of them (the owner's keywords must stay, in order), the reference
    to extended XMP, the stars when musiqd owns them, and the best-of-burst keyword and its record when
    ``best_of_burst`` (a write of it). A keyword container the write created may hold exactly the owner's
    keywords carried over from the others (:func:`carried_keywords`); one the write removed held only
    musiqd's keywords."""
    models = [model_ids] if isinstance(model_ids, str) else list(model_ids)
    owns = tuple(packet_path(struct_key(m)) for m in models)
    skipped = {_HAS_EXTENDED, *(packet_path(k) for k in _RATING_KEYS)} if rating_owned else {_HAS_EXTENDED}
    if best_of_burst:
        skipped.add(packet_path(BEST_WRITTEN_KEY))
    containers = {packet_path(k): k for k in KEYWORD_CONTAINERS}

    def ours(key: str, value: str) -> bool:
        return any(is_own_keyword(key, value, m) for m in models) or (
            best_of_burst and value == best_keyword(key)
        )

    def split(pairs: Sequence[tuple[str, str]]) -> tuple[dict[str, str], dict[str, list[str]]]:
        plain: dict[str, str] = {}
        keywords: dict[str, list[str]] = {}
        for path, value in pairs:
            base = path.split("[", 1)[0]
            if base in owns or base.startswith(tuple(o + "/" for o in owns)) or base in skipped:
                continue
            key = containers.get(base)
            if key is not None and path != base and re.fullmatch(r"\[\d+\]", path[len(base) :]):
                keywords.setdefault(key, [])
                if not ours(key, value):
                    keywords[key].append(value)
            elif key is not None and path == base:
                keywords.setdefault(key, [])
                plain[path] = value  # the array type
            else:
                plain.setdefault(path, value)
                if plain[path] != value:  # (a duplicate that differs: never repaired, see packet.prepare)
                    plain[path] += "\n" + value
        return plain, keywords

    old_plain, old_keywords = split(before)
    new_plain, new_keywords = split(after)
    # Taking the best-of-burst keyword away may remove a container that held only musiqd's keywords.
    emptied = {
        p for p, k in containers.items() if best_of_burst and k in old_keywords and not old_keywords[k]
    }
    changed = sorted(
        path
        for path in old_plain.keys() | new_plain.keys()
        if old_plain.get(path) != new_plain.get(path)
        and not (path in containers and path not in old_plain)
        and not (path in emptied and path not in new_plain)
    )
    for key in KEYWORD_CONTAINERS:
        if key in old_keywords:
            if new_keywords.get(key, [] if packet_path(key) in emptied else None) != old_keywords[key]:
                changed.append(packet_path(key))
        elif key in new_keywords and new_keywords[key] != carried_keywords(
            {k: [i for i in v if not _is_any_own(k, i, None)] for k, v in old_keywords.items()}, key
        ):
            changed.append(packet_path(key))
    return changed


def foreign_exif(exif: Any, *, rating_owned: bool) -> list[tuple[str, str]]:
    """Every EXIF value a write must leave as it was (positions in the file excepted), as sorted pairs."""
    out: list[tuple[str, str]] = []
    for datum in exif:
        key = str(datum.key())
        if key in _POSITION_KEYS or _POSITION_TAG.search(key) or (rating_owned and key in _EXIF_RATING_KEYS):
            continue
        out.append((key, str(datum.toString())))
    return sorted(out)
