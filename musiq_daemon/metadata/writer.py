"""Write a score into a photo's metadata, or into its XMP sidecar, without ever harming the photo.

>>> from musiq_daemon.metadata.writer import WritePolicy, write_score
>>> result = write_score(Path("IMG_0001.JPG"), record, WritePolicy())
>>> result.target, result.changed, result.rating_written

What is written, and the rules for stars and keywords, are in :mod:`musiq_daemon.metadata.xmp`.

Where
-----
``WritePolicy.mode``:

* ``"embed"`` (default): into the photo for JPEG, TIFF, PNG and WebP; everything else gets a sidecar.
  Proprietary RAW files always do (their makers' layouts are not ours to rewrite; Lightroom, Capture One,
  darktable and digiKam read sidecars for them), and so do HEIC/HEIF/AVIF (the metadata library cannot
  write that container), BMP and GIF. DNG follows ``WritePolicy.dng``: ``"sidecar"`` (default: the master
  file stays untouched; darktable and digiKam read the sidecar) or ``"embed"`` (Lightroom and Adobe
  Camera Raw read only a DNG's embedded XMP and ignore sidecars).
* ``"sidecar"``: never touch an original, sidecars for every format.
* ``"index-only"``: write nothing (read-only shares); the result says so.

Embedding rewrites the whole file. On a copy-on-write NAS volume with snapshots, each embedded write keeps
a full copy of the photo in the next snapshot and makes sync tools upload it again; a sidecar costs a few
kilobytes.

Sidecars
--------
Two naming conventions exist: ``IMG_1234.xmp`` (extension replaced: Lightroom, Capture One, Bridge,
Photo Mechanic) and ``IMG_1234.CR2.xmp`` (appended: darktable, digiKam). Every one of them that already
exists is updated (a user of both darktable and Lightroom keeps both in step); when none exists, one is
created by ``WritePolicy.sidecar_naming`` (``"replace"``, the default, or ``"append"``). Names are
looked up as ``.xmp`` and ``.XMP``; two names for one file (a case-insensitive share) count once.

``IMG_1234.xmp`` can belong to only one photo, but RAW+JPEG shooting makes ``IMG_1234.CR2`` and
``IMG_1234.JPG``. Like Lightroom, which treats the JPEG as a companion of the RAW, the RAW owns it: a photo
uses the replaced name only when no other photo with the same stem outranks or equals it (RAW, DNG
included, outranks everything else). The others use the appended name (``IMG_1234.JPG.xmp``) and never
touch ``IMG_1234.xmp``.

A sidecar is the user's edit history (Lightroom develop settings, darktable's history stack): it is
parsed, changed in memory and written back with everything else it holds; one that cannot be parsed is
never overwritten. A new sidecar is a standalone XMP packet. When a sidecar has no rating yet, the
original's embedded rating (e.g. set in camera) decides whether the stars are the user's. Two sidecars
are written one after the other, each atomically. In embed mode a photo's sidecars are not touched.

Photo managers notice changes made behind their back only when asked: Lightroom Classic flags the photo
("Metadata > Read Metadata from Files" loads it), darktable reads changed sidecars at start-up only with
"look for updated XMP files on startup", digiKam with its "reread metadata from file" action.

Safety
------
Every file is read with :func:`~musiq_daemon.metadata.safefile.read_snapshot`, changed in memory (the
metadata library never opens a file) and written with :func:`~musiq_daemon.metadata.safefile.atomic_replace`
only after verification: the compressed image data is byte-identical (same
:func:`~musiq_daemon.metadata.content_hash.content_hash`), the new bytes parse again and hold the new
values, and every other EXIF, IPTC and XMP value and the ICC profile are unchanged (a rewrite may only
move data, e.g. EXIF offsets). A photo whose XMP cannot be parsed is refused rather than overwritten.

Writing is idempotent: when the values of the model (score, raw score, version, variant, scale,
resolution policy, content hash) and the keyword and stars it would write are already there, nothing is
written (same inode, same modification time) and ``changed`` is False; ``ScoredAt`` alone never causes
a write.

The modification time changes on write, as it must for photo managers (Lightroom's "metadata changed
externally", digiKam, darktable) and backups. ``WritePolicy.preserve_mtime`` keeps it, with a cost:
backup tools that skip files of unchanged size and modification time (rsync's default) may then miss the
new version of a photo whose size did not change.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal, get_args

import exiv2

from musiq_daemon.api import ScoreRecord

# The decoder's name formatting is shared so that every message shows a path the same way.
from musiq_daemon.decode import RAW_SUFFIXES, SUPPORTED_SUFFIXES, _display, sniff_format
from musiq_daemon.errors import DecodeError, ReadOnlyError, UsageError, WriteError
from musiq_daemon.metadata import xmp as ours
from musiq_daemon.metadata.content_hash import content_hash
from musiq_daemon.metadata.safefile import FileSignature, atomic_replace, read_snapshot

Mode = Literal["embed", "sidecar", "index-only"]
DngMode = Literal["sidecar", "embed"]
SidecarNaming = Literal["replace", "append"]
Target = Literal["embedded", "sidecar", "none"]

EMBEDDABLE_FORMATS: Final = frozenset({"JPEG", "PNG", "TIFF", "WEBP"})
_HEAD_BYTES: Final = 4096
# A packet with an empty description: what a new sidecar starts from.
_NEW_SIDECAR: Final = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<x:xmpmeta xmlns:x="adobe:ns:meta/">\n'
    b' <rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#">\n'
    b'  <rdf:Description rdf:about=""/>\n'
    b" </rdf:RDF>\n"
    b"</x:xmpmeta>\n"
)
# A property in a packet, as an attribute (prefix:Name="...") or an element (<prefix:Name): used to tell an
# empty packet from one the toolkit failed to parse (it then reports no properties instead of an error).
_PACKET_PROPERTY: Final = re.compile(
    rb"\s(?!xmlns:|rdf:|xml:|x:)[A-Za-z_][\w.-]*:[A-Za-z_][\w.-]*\s*="  # an attribute
    rb"|<(?!rdf:|x:)[A-Za-z_][\w.-]*:[A-Za-z_]"  # an element
)


@dataclass(frozen=True)
class WritePolicy:
    """Where and what :func:`write_score` writes (see the module docstring)."""

    mode: Mode = "embed"
    dng: DngMode = "sidecar"
    sidecar_naming: SidecarNaming = "replace"
    # The model whose score sets xmp:Rating; None writes no stars.
    rating_model: str | None = "koniq"
    # Per model: the 4 boundaries on the reported scale for 2, 3, 4 and 5 stars. A model without an entry
    # gets neither stars nor a bucket keyword.
    star_thresholds: Mapping[str, ours.Thresholds] = field(
        default_factory=lambda: dict(ours.DEFAULT_STAR_THRESHOLDS)
    )
    keywords: bool = True  # write the bucket keywords
    preserve_mtime: bool = False  # see the module docstring before turning this on

    def __post_init__(self) -> None:
        for name, kind in (("mode", Mode), ("dng", DngMode), ("sidecar_naming", SidecarNaming)):
            value = getattr(self, name)
            if value not in get_args(kind):
                choices = ", ".join(get_args(kind))
                raise UsageError(f"write policy: unknown {name} '{value}': choose one of {choices}")
        checked = {
            ours.check_model_id(model): ours.check_thresholds(model, bounds)
            for model, bounds in self.star_thresholds.items()
        }
        object.__setattr__(self, "star_thresholds", checked)
        if self.rating_model is not None and self.rating_model not in checked:
            raise UsageError(
                f"write policy: the rating model '{self.rating_model}' has no star thresholds; "
                "add them or set rating_model to None"
            )


@dataclass(frozen=True)
class WrittenFile:
    """One file that holds the values after :func:`write_score`."""

    path: Path
    signature: FileSignature  # after the call: the daemon ignores change events that match it
    changed: bool
    rating_written: int | None


@dataclass(frozen=True)
class WriteResult:
    """What :func:`write_score` did.

    ``path``/``signature``: the file that holds the values (the photo, or the first sidecar: the one of
    the configured naming when both exist), whether or not it was written now; None for index-only.
    ``files`` lists every file (two sidecars when both naming conventions exist). ``rating_written``: the
    stars musiqd holds in ``path`` after the call (written now or already there); None when the stars
    belong to the user or no stars are written for this model. ``content_hash``: of the photo's image
    data (None for index-only, which reads nothing).
    """

    path: Path | None
    target: Target
    changed: bool
    rating_written: int | None
    signature: FileSignature | None
    content_hash: str | None
    files: tuple[WrittenFile, ...] = ()


def write_score(
    path: Path, record: ScoreRecord, policy: WritePolicy | None = None, *, scored_at: str | None = None
) -> WriteResult:
    """Write ``record`` (one model's score of the photo at ``path``) by ``policy``.

    ``scored_at`` (ISO 8601 with zone) defaults to the record's own, else now. Errors are
    :class:`~musiq_daemon.errors.MusiqError` with a one-line message, and the photo (and any sidecar) is
    then unchanged: :class:`~musiq_daemon.errors.DecodeError` for a corrupt or unsupported file or an
    unparseable sidecar, :class:`~musiq_daemon.errors.ReadOnlyError`,
    :class:`~musiq_daemon.errors.DiskFullError`, :class:`~musiq_daemon.errors.FileChangedError` (another
    program wrote meanwhile: retry later) and :class:`~musiq_daemon.errors.WriteError`.
    """
    policy = policy or WritePolicy()
    path = Path(path)
    if policy.mode == "index-only":
        return WriteResult(None, "none", False, None, None, None)
    model_id = ours.check_model_id(record.model_id)
    when = _scored_at(scored_at if scored_at is not None else getattr(record, "scored_at", None))
    label = _display(str(path))

    data, signature = read_snapshot(path)
    fmt = sniff_format(data[:_HEAD_BYTES], path.suffix)
    if fmt is None:
        raise DecodeError(f"{label}: not a supported photo format; musiqd writes nothing into it")
    digest = content_hash(data, path=path)
    ours.register_namespace()
    thresholds = policy.star_thresholds.get(model_id)
    stars = ours.stars_for(record.score, thresholds) if thresholds is not None else None
    plan = _Plan(
        score=_model_score(record, model_id, when, digest),
        keyword=ours.BucketKeyword(model_id, stars) if stars is not None and policy.keywords else None,
        rating_stars=stars if model_id == policy.rating_model else None,
        preserve_mtime=policy.preserve_mtime,
    )

    if _embeds(fmt, policy):
        written = _write_embedded(path, data, signature, digest, plan, label)
        files: tuple[WrittenFile, ...] = (written,)
        target: Target = "embedded"
    else:
        inherited = _embedded_ratings(data)
        del data  # a RAW can be large; the sidecar step does not need it
        files = tuple(
            _write_sidecar(sidecar, exists, plan, inherited)
            for sidecar, exists in sidecar_targets(path, policy.sidecar_naming)
        )
        target = "sidecar"
    first = files[0]
    return WriteResult(
        path=first.path,
        target=target,
        changed=any(f.changed for f in files),
        rating_written=first.rating_written,
        signature=first.signature,
        content_hash=digest,
        files=files,
    )


# --- sidecar names -----------------------------------------------------------------------------------------


def sidecar_targets(photo: Path, naming: SidecarNaming) -> list[tuple[Path, bool]]:
    """The sidecars to write for ``photo``: every existing one it may use (the configured convention's
    first), else the one to create; each as (path, exists)."""
    stem_names = [photo.with_suffix(s) for s in (".xmp", ".XMP")] if _owns_stem_sidecar(photo) else []
    appended_names = [photo.with_name(photo.name + s) for s in (".xmp", ".XMP")]
    preferred, other = (stem_names, appended_names) if naming == "replace" else (appended_names, stem_names)
    existing: list[Path] = []
    seen: set[tuple[int, int]] = set()
    for candidate in (*preferred, *other):
        try:
            info = candidate.stat()
        except OSError:
            continue
        if (info.st_dev, info.st_ino) not in seen:  # .xmp and .XMP are one file on case-insensitive shares
            seen.add((info.st_dev, info.st_ino))
            existing.append(candidate)
    if existing:
        return [(p, True) for p in existing]
    return [((stem_names or appended_names)[0] if naming == "replace" else appended_names[0], False)]


def _owns_stem_sidecar(photo: Path) -> bool:
    """Whether ``photo`` may use the extension-replaced sidecar name: no other photo with the same stem
    ranks as high (a RAW outranks a JPEG/HEIC/...; see the module docstring)."""
    rank = _rank(photo.suffix)
    try:
        own = photo.stat()
    except OSError:
        own = None
    for suffix in SUPPORTED_SUFFIXES:
        if _rank(suffix) < rank:
            continue
        for spelled in {suffix, suffix.upper()}:
            sibling = photo.with_suffix(spelled)
            try:
                info = sibling.stat()
            except OSError:
                continue
            if own is None or (info.st_dev, info.st_ino) != (own.st_dev, own.st_ino):
                return False
    return True


def _rank(suffix: str) -> int:
    return 1 if suffix.lower() in RAW_SUFFIXES else 0


# --- the write itself --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Plan:
    score: ours.ModelScore
    keyword: ours.BucketKeyword | None
    rating_stars: int | None
    preserve_mtime: bool


def _embeds(fmt: str, policy: WritePolicy) -> bool:
    if policy.mode == "sidecar":
        return False
    return fmt in EMBEDDABLE_FORMATS or (fmt == "RAW:DNG" and policy.dng == "embed")


def _write_embedded(
    path: Path, data: bytes, signature: FileSignature, digest: str, plan: _Plan, label: str
) -> WrittenFile:
    image = _open(data, label)
    xmp, exif = image.xmpData(), image.exifData()
    before = _Foreign.of(image, plan.score.model_id)
    applied = _apply(xmp, exif, plan, (), label)
    if not applied.changed:
        return WrittenFile(path, signature, False, applied.rating_written)
    _check_writable(path, label)
    new = _serialise(image, label)
    del image
    if content_hash(new, path=path) != digest:
        raise WriteError(f"{label}: writing the metadata would change the image data; nothing was written")
    check = _open(new, label)
    _verify(check, plan, applied, before, label)
    del check
    new_signature = atomic_replace(path, new, expected=signature, preserve_mtime=plan.preserve_mtime)
    return WrittenFile(path, new_signature, True, applied.rating_written)


def _write_sidecar(path: Path, exists: bool, plan: _Plan, inherited: tuple[int | None, ...]) -> WrittenFile:
    label = _display(str(path))
    if exists:
        data, signature = read_snapshot(path)
    else:
        data, signature = _NEW_SIDECAR, None
    image = _open_sidecar(data, label)
    before = _Foreign.of(image, plan.score.model_id)
    applied = _apply(image.xmpData(), None, plan, inherited, label)
    if not applied.changed and signature is not None:  # (a new sidecar always changes)
        return WrittenFile(path, signature, False, applied.rating_written)
    if signature is not None:
        _check_writable(path, label)
    new = _serialise(image, label)
    del image
    _verify(_open_sidecar(new, label), plan, applied, before, label)
    new_signature = atomic_replace(
        path, new, expected=signature, preserve_mtime=plan.preserve_mtime and signature is not None
    )
    return WrittenFile(path, new_signature, True, applied.rating_written)


def _apply(
    xmp: Any, exif: Any | None, plan: _Plan, inherited: tuple[int | None, ...], label: str
) -> ours.Applied:
    """:func:`~musiq_daemon.metadata.xmp.apply_score` in memory; ``exif`` None for a sidecar."""
    try:
        return ours.apply_score(
            xmp,
            exif,
            plan.score,
            keyword=plan.keyword,
            rating_stars=plan.rating_stars,
            mirrors=exif is not None,
            inherited=inherited,
        )
    except exiv2.Exiv2Error as exc:
        raise WriteError(
            f"{label}: cannot update its metadata ({_exiv2_message(exc)}); nothing was written"
        ) from None


def _embedded_ratings(data: bytes) -> tuple[int | None, ...]:
    """The ratings stored in a photo that gets a sidecar (e.g. set in camera); none when the metadata
    library cannot read the format (some RAW formats), which then leaves the decision to the sidecar."""
    try:
        image = exiv2.ImageFactory.open(data)
        image.readMetadata()
    except exiv2.Exiv2Error:
        return ()
    return ours.embedded_ratings(image.xmpData(), image.exifData())


# --- verification ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Foreign:
    """Everything in a file's metadata that a write must not change."""

    xmp_owned: list[tuple[str, str]]  # with the rating as musiqd's (left out)
    xmp_user: list[tuple[str, str]]  # with the rating as the user's (compared)
    exif_owned: list[tuple[str, str]]
    exif_user: list[tuple[str, str]]
    iptc: list[tuple[str, str]]
    icc: bytes | None

    @classmethod
    def of(cls, image: Any, model_id: str) -> _Foreign:
        xmp, exif = image.xmpData(), image.exifData()
        return cls(
            xmp_owned=ours.foreign_xmp(xmp, model_id, rating_owned=True),
            xmp_user=ours.foreign_xmp(xmp, model_id, rating_owned=False),
            exif_owned=ours.foreign_exif(exif, rating_owned=True),
            exif_user=ours.foreign_exif(exif, rating_owned=False),
            iptc=sorted((str(d.key()), str(d.toString())) for d in image.iptcData()),
            icc=bytes(image.iccProfile().data()) if image.iccProfileDefined() else None,
        )

    def differences(self, other: _Foreign, *, rating_owned: bool) -> list[str]:
        """What differs from ``other``, by kind; the stars count only when they are the user's."""
        checks = {
            "XMP": (self.xmp_owned, other.xmp_owned) if rating_owned else (self.xmp_user, other.xmp_user),
            "EXIF": (self.exif_owned, other.exif_owned)
            if rating_owned
            else (self.exif_user, other.exif_user),
            "IPTC": (self.iptc, other.iptc),
            "ICC profile": (self.icc, other.icc),
        }
        return [name for name, (mine, theirs) in checks.items() if mine != theirs]


def _verify(check: Any, plan: _Plan, applied: ours.Applied, before: _Foreign, label: str) -> None:
    """The re-parsed new bytes hold the new values and nothing else changed; else :class:`WriteError`."""
    score = plan.score
    xmp = check.xmpData()
    problems = []
    if ours.read_model_fields(xmp, score.model_id) != dict(score.fields):
        problems.append("the score did not read back")
    stars = applied.rating_written
    if stars is not None and ours.get_text(xmp, ours.XMP_RATING_KEY) != str(stars):
        problems.append("the rating did not read back")
    if plan.keyword is not None and plan.keyword.leaf not in (ours.get_items(xmp, ours.SUBJECT_KEY) or []):
        problems.append("the keyword did not read back")
    changed = before.differences(_Foreign.of(check, score.model_id), rating_owned=stars is not None)
    if changed:
        problems.append(f"other metadata would change ({', '.join(changed)})")
    if problems:
        raise WriteError(
            f"{label}: verification failed, {'; '.join(problems)}; nothing was written "
            "(use write mode 'sidecar' for this file)"
        )


# --- helpers -----------------------------------------------------------------------------------------------


def _check_writable(path: Path, label: str) -> None:
    """Refuse a file its owner made read-only: replacing it by rename would work (that needs only the
    directory), but a read-only photo is one the user protected. Mode bits count even for root."""
    try:
        mode = path.stat().st_mode
    except OSError:
        return  # gone: the replace step reports it
    if not mode & 0o222 or not os.access(path, os.W_OK):
        raise ReadOnlyError(
            f"{label} is read-only; musiqd leaves it as it is: make it writable, or use write mode "
            "'sidecar' or 'index-only'"
        )


def _open(data: bytes, label: str) -> Any:
    """An exiv2 image on ``data`` in memory, its metadata read; refuses XMP the toolkit cannot parse."""
    try:
        image = exiv2.ImageFactory.open(data)
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise DecodeError(f"{label}: cannot read its metadata ({_exiv2_message(exc)})") from None
    packet = str(image.xmpPacket()).encode("utf-8", "replace")
    if image.xmpData().empty() and _PACKET_PROPERTY.search(packet):
        raise DecodeError(
            f"{label}: its XMP metadata cannot be parsed; musiqd will not overwrite it "
            "(repair it with a metadata tool, or use write mode 'index-only')"
        )
    return image


def _open_sidecar(data: bytes, label: str) -> Any:
    """:func:`_open` for an XMP sidecar, with only its XMP: the library derives EXIF and IPTC from a
    sidecar's XMP and would merge them back into it on writing."""
    image = _open(data, label)
    if int(image.imageType()) != int(exiv2.ImageType.xmp):
        raise DecodeError(f"{label}: not an XMP sidecar; musiqd leaves it alone (rename or remove it)")
    image.clearExifData()
    image.clearIptcData()
    return image


def _serialise(image: Any, label: str) -> bytes:
    try:
        image.writeMetadata()  # into the in-memory copy
        return bytes(image.io().data())
    except exiv2.Exiv2Error as exc:
        raise WriteError(
            f"{label}: cannot write its metadata ({_exiv2_message(exc)}); nothing was written"
        ) from None


def _exiv2_message(exc: Exception) -> str:
    message = exc.args[-1] if exc.args else exc
    return " ".join(str(message).split())


def _model_score(record: ScoreRecord, model_id: str, scored_at: str, digest: str) -> ours.ModelScore:
    return ours.ModelScore(
        model_id,
        {
            "Score": ours.format_number(record.score, 3),
            "RawScore": ours.format_number(record.raw, 3),
            "Model": model_id,
            "ModelVersion": record.model_version,
            "Variant": record.variant,
            "ScaleMin": ours.format_scale(record.scale_min),
            "ScaleMax": ours.format_scale(record.scale_max),
            "ResolutionPolicy": record.resolution_policy,
            "ScoredAt": scored_at,
            "ContentHash": digest,
        },
    )


def _scored_at(value: object) -> str:
    """ISO 8601 with a zone offset; now when not given."""
    if value is None:
        return datetime.now().astimezone().isoformat(timespec="seconds")
    text = str(value)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        parsed = None
    if parsed is None or parsed.tzinfo is None:
        raise UsageError(
            f"scored_at must be ISO 8601 with a zone offset, e.g. 2024-05-01T10:00:00+02:00: {text!r}"
        )
    return text


__all__ = [
    "EMBEDDABLE_FORMATS",
    "WritePolicy",
    "WriteResult",
    "WrittenFile",
    "sidecar_targets",
    "write_score",
]
