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
Two naming conventions exist: ``IMG_1234.CR2.xmp`` (appended: darktable, digiKam) and ``IMG_1234.xmp``
(extension replaced: Lightroom Classic, Capture One, Bridge, Photo Mechanic). Every one of them that
already exists is updated in place (a user of both darktable and Lightroom keeps both in step); when none
exists, one is created by ``WritePolicy.sidecar_naming``: ``"append"`` (the default) or ``"replace"``.
The default is the name the open photo managers read and re-read: darktable reads ``IMG_1234.xmp`` once
at import and from then on reads and writes only its own ``IMG_1234.CR2.xmp`` (so later scores in
``IMG_1234.xmp`` would never reach it), and digiKam writes the appended name too (it reads sidecars only
with "Read from sidecar files" switched on). Lightroom Classic and Capture One read only the replaced
name: their users choose ``"replace"``. Names are looked up as ``.xmp`` and ``.XMP``; two names for one
file (a case-insensitive share) count once.

A photo manager that rewrites a sidecar keeps the stars but may drop ``musiqd:RatingWritten`` (darktable
writes its own file from the one musiqd made): ``write_score(..., known_rating=N)`` passes the stars the
index says musiqd wrote last, and stars equal to them stay musiqd's.

A photo whose XMP cannot be read or repaired without loss (duplicates that disagree, XML that is not
well-formed, text that is not UTF-8) is left untouched in embed mode: the score goes to a sidecar, and
``WriteResult.notes`` says so in one line. The owner's stars in such a packet still count (every value
is read with the tolerant reader of :mod:`musiq_daemon.metadata.packet`).

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
only after verification.

Before a photo is read, the checks the decoder makes (:func:`musiq_daemon.decode.check_file`) refuse it
when it is sparse or larger than its format's limit (``max_file_mb``), with the decoder's one-line
:class:`~musiq_daemon.errors.DecodeError`: a write reads the photo whole and holds about three copies of
it. Sparse files are refused, not copied hole for hole: a photo has no holes, so a file made mostly of
them (a valid JPEG followed by gigabytes never written) is no photo to write into, and rewriting it would
turn 100 KB on disk into gigabytes. Sidecars larger than any real one (64 MB) are refused the same way.

JPEG, PNG and WebP: only the XMP is replaced (:mod:`musiq_daemon.metadata.containers`); EXIF, maker
notes, every IPTC block, ICC profiles and everything else stay byte-identical, and EXIF rating mirrors
are patched where they stand. XMP that the toolkit refuses is first repaired where that is provably
lossless (:func:`musiq_daemon.metadata.packet.prepare`). Verification: the compressed image data is
unchanged (same :func:`~musiq_daemon.metadata.content_hash.content_hash`), every other part is
byte-identical, the new XMP holds the new values, and every other XMP value, read by an independent
reader, is unchanged.

TIFF (and DNG in embed mode): the metadata library writes the whole file; the same checks run on the
values it wrote (EXIF, IPTC, XMP, ICC; a rewrite may only move data, e.g. EXIF offsets).

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

import contextlib
import html
import logging
import os
import re
import stat
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Final, Literal

import exiv2

from musiq_daemon import native_log

# The decoder's name formatting is shared so that every message shows a path the same way.
from musiq_daemon.decode import check_file, display_name, file_size_text, sniff_format
from musiq_daemon.errors import DecodeError, ReadOnlyError, UsageError, WriteError
from musiq_daemon.metadata import containers, packet
from musiq_daemon.metadata import xmp as ours
from musiq_daemon.metadata.content_hash import content_hash

# The policy lives apart (the configuration loads it without the writer); its names are the writer's API too.
from musiq_daemon.metadata.policy import DngMode as DngMode
from musiq_daemon.metadata.policy import Mode as Mode
from musiq_daemon.metadata.policy import SidecarNaming as SidecarNaming
from musiq_daemon.metadata.policy import WritePolicy as WritePolicy
from musiq_daemon.metadata.safefile import FileSignature, atomic_replace, read_snapshot
from musiq_daemon.metadata.sidecar import move_sidecars, sidecar_targets
from musiq_daemon.records import ScoreRecord

log = logging.getLogger(__name__)

Target = Literal["embedded", "sidecar", "none"]

EMBEDDABLE_FORMATS: Final = frozenset({"JPEG", "PNG", "TIFF", "WEBP"})
_HEAD_BYTES: Final = 4096
# Lightroom's sidecars with masks and long develop histories reach a few MB; the XMP toolkit needs several
# times a packet's size to parse it.
_MAX_SIDECAR_BYTES: Final = 64_000_000
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
class WrittenFile:
    """One file that holds the values after :func:`write_score`."""

    path: Path
    signature: FileSignature  # after the call: the daemon ignores change events that match it
    changed: bool
    rating_written: int | None
    best_written: bool | None = None  # after write_best_of_burst: see WriteResult.best_written


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
    # One line each for the owner: a lossless repair made to the photo's XMP, or why the score went to a
    # sidecar instead of into the photo.
    notes: tuple[str, ...] = ()
    rating_model: str | None = None  # the model whose score the stars in ``rating_written`` come from
    # After write_best_of_burst: musiqd's keyword is there now (True), musiqd took it away or never added
    # it (False), or the keyword is the user's, left as it was (None).
    best_written: bool | None = None


def write_score(
    path: Path,
    record: ScoreRecord,
    policy: WritePolicy | None = None,
    *,
    scored_at: str | None = None,
    known_rating: int | None = None,
    max_file_mb: Mapping[str, int] | None = None,
) -> WriteResult:
    """Write ``record`` (one model's score of the photo at ``path``) by ``policy``: :func:`write_scores`
    with one record."""
    return write_scores(
        path, [record], policy, scored_at=scored_at, known_rating=known_rating, max_file_mb=max_file_mb
    )


def write_scores(
    path: Path,
    records: Sequence[ScoreRecord],
    policy: WritePolicy | None = None,
    *,
    scored_at: str | None = None,
    known_rating: int | None = None,
    max_file_mb: Mapping[str, int] | None = None,
) -> WriteResult:
    """Write ``records`` (one per model, of the photo at ``path``) by ``policy``, in one write: the file is
    read, changed and replaced once whatever the number of models.

    ``scored_at`` (ISO 8601 with zone) defaults to each record's own, else now. ``known_rating``: the stars
    the index says musiqd wrote for this photo last time (they stay musiqd's after a photo manager rewrote
    a sidecar without musiqd's record of them). ``max_file_mb``: the largest photo by format, as for the
    decoder (:data:`musiq_daemon.decode.DEFAULT_MAX_FILE_MB` by default). Errors are
    :class:`~musiq_daemon.errors.MusiqError` with a one-line message, and the photo (and any sidecar) is
    then unchanged: :class:`~musiq_daemon.errors.DecodeError` for a corrupt, unsupported, sparse or
    oversized file or an unparseable or oversized sidecar,
    :class:`~musiq_daemon.errors.ReadOnlyError`, :class:`~musiq_daemon.errors.DiskFullError`,
    :class:`~musiq_daemon.errors.FileChangedError` (another program wrote meanwhile: retry later) and
    :class:`~musiq_daemon.errors.WriteError`.
    """
    policy = policy or WritePolicy()
    path = Path(path)
    if policy.mode == "index-only":
        return WriteResult(None, "none", False, None, None, None)
    if not records or len({r.model_id for r in records}) != len(records):
        raise UsageError("write_scores needs one record per model, at least one")
    model_ids = [ours.check_model_id(r.model_id) for r in records]
    photo = _read_photo(path, max_file_mb)
    models: list[_ModelPlan] = []
    for record, model_id in zip(records, model_ids, strict=True):
        when = _scored_at(scored_at if scored_at is not None else getattr(record, "scored_at", None))
        thresholds = policy.star_thresholds.get(model_id)
        stars = ours.stars_for(record.score, thresholds) if thresholds is not None else None
        models.append(
            _ModelPlan(
                score=_model_score(record, model_id, when, photo.digest),
                keyword=ours.BucketKeyword(model_id, stars)
                if stars is not None and policy.keywords
                else None,
                rating_stars=stars if model_id == policy.rating_model else None,
            )
        )
    plan = _Plan(tuple(models), preserve_mtime=policy.preserve_mtime, known_rating=known_rating)
    return _write_plan(path, photo, plan, policy)


def write_best_of_burst(
    path: Path,
    best: bool,
    policy: WritePolicy | None = None,
    *,
    known: bool | None = None,
    max_file_mb: Mapping[str, int] | None = None,
) -> WriteResult:
    """Add (``best``) or take away the ``MUSIQ|best-of-burst`` keyword of the photo at ``path``, where its
    scores are written (the photo, or its sidecars), with the checks and errors of :func:`write_scores`;
    only musiqd's own keyword is ever changed (see :mod:`musiq_daemon.metadata.xmp`). ``known``: what the
    index says musiqd wrote last. Taking it away never creates a sidecar."""
    policy = policy or WritePolicy()
    path = Path(path)
    if policy.mode == "index-only":
        return WriteResult(None, "none", False, None, None, None)
    photo = _read_photo(path, max_file_mb)
    plan = _Plan((), preserve_mtime=policy.preserve_mtime, best_of_burst=best, known_best=known)
    return _write_plan(path, photo, plan, policy)


@dataclass(frozen=True)
class _Photo:
    """A photo as read for a write: its bytes, their signature, format and image-data hash."""

    data: bytes
    signature: FileSignature
    fmt: str
    digest: str


def _read_photo(path: Path, max_file_mb: Mapping[str, int] | None) -> _Photo:
    label = display_name(str(path))
    max_bytes = _photo_limit(path, label, max_file_mb)
    data, signature = read_snapshot(path, max_bytes=max_bytes)
    fmt = sniff_format(data[:_HEAD_BYTES], path.suffix)
    if fmt is None:
        raise DecodeError(f"{label}: not a supported photo format; musiqd writes nothing into it")
    digest = content_hash(data, path=path)
    ours.register_namespace()
    return _Photo(data, signature, fmt, digest)


def _write_plan(path: Path, photo: _Photo, plan: _Plan, policy: WritePolicy) -> WriteResult:
    """Carry out ``plan`` on the photo read as ``photo``: into it, or into its sidecars."""
    label = display_name(str(path))
    data, signature, fmt, digest = photo.data, photo.signature, photo.fmt, photo.digest
    del photo
    notes: list[str] = []
    files: tuple[WrittenFile, ...] = ()
    target: Target = "sidecar"
    if _embeds(fmt, policy):
        try:
            with native_log.exiv2_messages() as messages:
                written, repairs = _write_embedded(path, data, signature, digest, plan, label, fmt)
            files, target = (written,), "embedded"
            if repairs and written.changed:
                notes.append(f"{label}: repaired its XMP losslessly ({'; '.join(repairs)})")
        except packet.UnrepairableError as exc:
            notes.append(f"{label}: {exc}; its metadata stays as it is and the score goes to a sidecar")
        finally:
            _log_native(messages, label)
    if not files:
        embedded = _embedded_state(data, fmt, label)
        del data  # a RAW can be large; the sidecar step does not need it
        targets = sidecar_targets(path, policy.sidecar_naming)
        if plan.best_of_burst is False:  # taking a keyword away never needs a new sidecar
            targets = [(sidecar, exists) for sidecar, exists in targets if exists]
            if not targets:  # no sidecar: no keyword anywhere
                return WriteResult(
                    None, "sidecar", False, None, None, digest, notes=tuple(notes), best_written=False
                )
        files = tuple(_write_sidecar(sidecar, exists, plan, embedded) for sidecar, exists in targets)
        if notes:
            notes[-1] += f" ({files[0].path.name})"
    first = files[0]
    return WriteResult(
        path=first.path,
        target=target,
        changed=any(f.changed for f in files),
        rating_written=first.rating_written,
        signature=first.signature,
        content_hash=digest,
        files=files,
        notes=tuple(notes),
        rating_model=next((m.score.model_id for m in plan.models if m.rating_stars is not None), None),
        best_written=first.best_written,
    )


def _photo_limit(path: Path, label: str, max_file_mb: Mapping[str, int] | None) -> int | None:
    """The most bytes :func:`read_snapshot` may read of the photo at ``path``, after refusing, unread, a
    photo the decoder would refuse too: sparse, larger than its format's limit, or no supported format
    (:class:`DecodeError`). A file that cannot be opened is left to :func:`read_snapshot`, which words
    that as a writer does (symbolic links, files gone, permissions)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            return None
        head = os.pread(fd, _HEAD_BYTES, 0)
        limit = check_file(fd, info, head, path.suffix, label, max_file_mb)
    except OSError:
        return None
    finally:
        os.close(fd)
    if limit is None:
        raise DecodeError(f"{label}: not a supported photo format; musiqd writes nothing into it")
    return limit


def _log_native(messages: list[native_log.NativeMessage], label: str) -> None:
    line = native_log.summarise(label, messages)
    if line is not None:
        log.debug("%s", line)


# --- the write itself --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _ModelPlan:
    """One model's part of a write: its values, its bucket keyword and (for the rating model) its stars."""

    score: ours.ModelScore
    keyword: ours.BucketKeyword | None
    rating_stars: int | None


@dataclass(frozen=True)
class _Plan:
    """One write: each model's part, or (``best_of_burst`` not None) the best-of-burst keyword alone."""

    models: tuple[_ModelPlan, ...]
    preserve_mtime: bool
    known_rating: int | None = None
    best_of_burst: bool | None = None
    known_best: bool | None = None

    @property
    def model_ids(self) -> tuple[str, ...]:
        return tuple(m.score.model_id for m in self.models)


def _embeds(fmt: str, policy: WritePolicy) -> bool:
    if policy.mode == "sidecar":
        return False
    return fmt in EMBEDDABLE_FORMATS or (fmt == "RAW:DNG" and policy.dng == "embed")


def _write_embedded(
    path: Path, data: bytes, signature: FileSignature, digest: str, plan: _Plan, label: str, fmt: str
) -> tuple[WrittenFile, tuple[str, ...]]:
    """Write into the photo; :class:`~musiq_daemon.metadata.packet.UnrepairableError` when its XMP cannot be
    read or repaired without loss (the caller then writes a sidecar)."""
    if fmt not in containers.SPLICED_FORMATS:
        return _write_embedded_tiff(path, data, signature, digest, plan, label), ()
    try:
        layout = containers.read_layout(data, fmt)
    except containers.LayoutError as exc:
        raise DecodeError(f"{label}: cannot read its metadata ({exc})") from None
    prepared = packet.prepare(layout.packet) if layout.packet is not None else packet.Prepared(b"", ())
    xmp = _decode_packet(prepared.data)
    entries = containers.exif_ratings(layout.exif)
    exif = {key: entries[tag].value for tag, key in _EXIF_KEYS.items() if tag in entries}
    exif_out = dict(exif)
    applied = _apply(xmp, exif, plan, (), label, exif_out)
    if not applied.changed:
        return WrittenFile(
            path, signature, False, applied.rating_written, applied.best_written
        ), prepared.repairs
    _check_writable(path, label)
    about = _keep_about(xmp, prepared.data)
    standard, extended = _encode(xmp, label)
    if about:
        standard = standard.replace(b'rdf:about=""', b'rdf:about="' + about + b'"')
    if prepared.data:
        standard = packet.restore_empty_arrays(standard, prepared.data)
    patched = {tag: exif_out[key] for tag, key in _EXIF_KEYS.items() if exif_out.get(key) != exif.get(key)}
    new_exif = containers.patch_exif(layout.exif, patched) if layout.exif is not None and patched else None
    try:
        new = layout.rebuild(standard, extended, new_exif)
    except containers.LayoutError as exc:
        raise WriteError(f"{label}: cannot write its metadata ({exc}); nothing was written") from None
    if content_hash(new, path=path) != digest:
        raise WriteError(f"{label}: writing the metadata would change the image data; nothing was written")
    _verify_spliced(layout, new, new_exif, prepared.data, plan, applied, label)
    new_signature = atomic_replace(path, new, expected=signature, preserve_mtime=plan.preserve_mtime)
    return WrittenFile(
        path, new_signature, True, applied.rating_written, applied.best_written
    ), prepared.repairs


_EXIF_KEYS: Final = {
    containers.EXIF_RATING: ours.EXIF_RATING_KEY,
    containers.EXIF_RATING_PERCENT: ours.EXIF_RATING_PERCENT_KEY,
}


def _decode_packet(data: bytes) -> Any:
    """The XMP toolkit's reading of a prepared packet (an empty one for b"");
    :class:`~musiq_daemon.metadata.packet.UnrepairableError` when the toolkit still refuses it."""
    if not data:
        return exiv2.XmpData()
    try:
        image = exiv2.ImageFactory.open(data)
        image.readMetadata()
    except exiv2.Exiv2Error as exc:
        raise packet.UnrepairableError(f"its XMP cannot be read ({_exiv2_message(exc)})") from None
    xmp = image.xmpData()
    if xmp.empty() and _PACKET_PROPERTY.search(data):
        raise packet.UnrepairableError("its XMP cannot be read by the XMP toolkit")
    return xmp


_FORMAT = exiv2.XmpParser.XmpFormatFlags
# Kept in the standard packet when a large packet is split: what photo managers filter on, and ours.
_STANDARD_ONLY: Final = re.compile(
    r"Xmp\.(musiqd|xmpNote|MicrosoftPhoto)\.|Xmp\.xmp\.Rating\Z|Xmp\.dc\.subject\Z|"
    r"Xmp\.lr\.hierarchicalSubject\Z|Xmp\.digiKam\.TagsList\Z|Xmp\.xmp\.Label\Z"
)


def _keep_about(xmp: Any, old_packet: bytes) -> bytes:
    """The packet's ``rdf:about`` (Windows writes ``uuid:...``), escaped for an attribute; the XMP toolkit
    turns it into an ``xmpMM:InstanceID`` property, which is taken back out (it was never one)."""
    about = packet.about(old_packet)
    if not about:
        return b""
    key = "Xmp.xmpMM.InstanceID"
    if ours.get_text(xmp, key) == about and not packet.property_values(
        old_packet, packet.XMP_MM_NS + "InstanceID"
    ):
        del xmp[key]
    return html.escape(about, quote=True).encode("utf-8")


def _encode(xmp: Any, label: str) -> tuple[bytes, bytes | None]:
    """The standard packet, and an extended one when everything does not fit one JPEG segment: the
    largest properties (never ours, the stars or the keywords) move to the extension, as the XMP
    specification describes."""
    for padding in (2048, 0):  # room for other programs to edit in place, when it fits
        standard = _encode_packet(xmp, padding=padding)
        if len(standard) <= containers.MAX_STANDARD:
            return standard, None
    groups: dict[str, list[Any]] = {}
    for datum in xmp:
        key = str(datum.key())
        groups.setdefault(re.split(r"[/\[]", key, maxsplit=1)[0], []).append(datum)
    movable = sorted(
        (top for top in groups if not _STANDARD_ONLY.match(top)),
        key=lambda top: -sum(len(str(d.toString())) + len(str(d.key())) for d in groups[top]),
    )
    moved: set[str] = set()
    for top in movable:
        moved.add(top)
        std = exiv2.XmpData()
        for name, datums in groups.items():
            if name not in moved:
                for datum in datums:
                    std.add(datum)
        ours.set_text(std, "Xmp.xmpNote.HasExtendedXMP", "0" * 32)
        if len(_encode_packet(std, padding=0)) <= containers.MAX_STANDARD:
            ext = exiv2.XmpData()
            for name in moved:
                for datum in groups[name]:
                    ext.add(datum)
            extended = _encode_packet(ext, padding=0, wrapper=False)
            ours.set_text(std, "Xmp.xmpNote.HasExtendedXMP", containers.extended_guid(extended))
            return _encode_packet(std, padding=0), extended
    raise WriteError(f"{label}: its XMP is too large to write even when split; nothing was written")


def _encode_packet(xmp: Any, *, padding: int, wrapper: bool = True) -> bytes:
    flags = _FORMAT.useCompactFormat | (0 if wrapper else _FORMAT.omitPacketWrapper)
    result = exiv2.XmpParser.encode(xmp, flags, padding)
    code, text = (result[0], result[1]) if isinstance(result, list | tuple) else (0, result)
    if code != 0:
        raise WriteError(f"cannot serialise the XMP (toolkit error {code})")
    return str(text).encode("utf-8")


def _write_embedded_tiff(
    path: Path, data: bytes, signature: FileSignature, digest: str, plan: _Plan, label: str
) -> WrittenFile:
    """TIFF (and DNG in embed mode): the metadata library writes the whole file; every value it wrote
    is compared with the state before."""
    image = _open(data, label)
    xmp, exif_data = image.xmpData(), image.exifData()
    before = _Foreign.of(image)
    exif = {key: int(v) for key in _EXIF_KEYS.values() if (v := _exif_int(exif_data, key)) is not None}
    exif_out = dict(exif)
    applied = _apply(xmp, exif, plan, (), label, exif_out)
    if not applied.changed:
        return WrittenFile(path, signature, False, applied.rating_written, applied.best_written)
    for key, value in exif_out.items():
        if exif.get(key) != value:
            exif_data[key] = exiv2.UShortValue(value)
    _check_writable(path, label)
    new = _serialise(image, label)
    del image
    if content_hash(new, path=path) != digest:
        raise WriteError(f"{label}: writing the metadata would change the image data; nothing was written")
    check = _open(new, label)
    _verify(check, plan, applied, before, label)
    del check
    # The library sees only the first IPTC block of a Photoshop resource: compare the raw blocks too.
    if containers.tiff_blobs(new) != containers.tiff_blobs(data):
        _refuse(["other metadata would change (IPTC or Photoshop resources)"], label)
    new_signature = atomic_replace(path, new, expected=signature, preserve_mtime=plan.preserve_mtime)
    return WrittenFile(path, new_signature, True, applied.rating_written, applied.best_written)


def _exif_int(exif: Any, key: str) -> int | None:
    text = ours.get_text(exif, key)
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None


def _write_sidecar(path: Path, exists: bool, plan: _Plan, embedded: _Embedded) -> WrittenFile:
    label = display_name(str(path))
    if exists:
        with contextlib.suppress(OSError):  # a sidecar that cannot be read: read_snapshot says why
            size = path.stat().st_size
            if size > _MAX_SIDECAR_BYTES:
                raise DecodeError(
                    f"{label}: XMP sidecar is {file_size_text(size)}, larger than any real one "
                    f"({file_size_text(_MAX_SIDECAR_BYTES)}); musiqd leaves it alone (move it away, or use "
                    "write mode 'index-only')"
                )
        data, signature = read_snapshot(path, max_bytes=_MAX_SIDECAR_BYTES)
    else:
        data, signature = _NEW_SIDECAR, None
    try:
        prepared = packet.prepare(data)
    except packet.UnrepairableError as exc:
        raise DecodeError(f"{label}: {exc}; musiqd never overwrites a sidecar it cannot read") from None
    image = _open_sidecar(prepared.data, label)
    if signature is None:
        _seed(image.xmpData(), embedded)
    before = _Foreign.of(image) if signature is not None else None
    applied = _apply(image.xmpData(), None, plan, embedded.ratings, label, None)
    if not applied.changed and signature is not None:  # (a new sidecar always changes)
        return WrittenFile(path, signature, False, applied.rating_written, applied.best_written)
    if signature is not None:
        _check_writable(path, label)
    new = _serialise(image, label)
    del image
    check = _open_sidecar(new, label)
    if before is None:  # a new sidecar: the owner's values it was seeded with must read back
        before = _Foreign.of(_seeded_sidecar(embedded, label))
    _verify(check, plan, applied, before, label)
    new_signature = atomic_replace(
        path, new, expected=signature, preserve_mtime=plan.preserve_mtime and signature is not None
    )
    return WrittenFile(path, new_signature, True, applied.rating_written, applied.best_written)


@dataclass(frozen=True)
class _Embedded:
    """What a photo that gets a sidecar already says about itself: every rating value (as stars: they
    decide whether the stars are the owner's), the owner's rating as written, and the owner's keywords
    by container (IPTC keywords as ``dc:subject`` when there are no XMP keywords)."""

    ratings: tuple[int | None, ...] = ()
    rating_text: str | None = None
    keywords: Mapping[str, list[str]] = field(default_factory=dict)


def _seed(xmp: Any, embedded: _Embedded) -> None:
    """Start a new sidecar with the owner's stars and keywords from the photo: darktable takes a sidecar's
    keywords instead of the photo's, and shows a sidecar without a rating as 1 star."""
    if embedded.rating_text is not None:
        ours.set_text(xmp, ours.XMP_RATING_KEY, embedded.rating_text)
    for key, items in embedded.keywords.items():
        if items:
            default = exiv2.TypeId.xmpSeq if key == ours.TAGS_LIST_KEY else exiv2.TypeId.xmpBag
            ours.set_items(xmp, key, items, default)


def _seeded_sidecar(embedded: _Embedded, label: str) -> Any:
    image = _open_sidecar(_NEW_SIDECAR, label)
    _seed(image.xmpData(), embedded)
    return _open_sidecar(_serialise(image, label), label)


def _apply(
    xmp: Any,
    exif: dict[str, int] | None,
    plan: _Plan,
    inherited: tuple[int | None, ...],
    label: str,
    exif_out: dict[str, int] | None,
) -> ours.Applied:
    """:func:`~musiq_daemon.metadata.xmp.apply_score` in memory; ``exif`` None for a sidecar. The EXIF
    rating entries to patch end up in ``exif_out``."""
    try:
        changed, rating_written = False, None
        for model in plan.models:
            applied = ours.apply_score(
                xmp,
                exif_out if exif_out is not None else exif,
                model.score,
                keyword=model.keyword,
                rating_stars=model.rating_stars,
                mirrors=exif is not None,
                inherited=inherited,
                known_rating=plan.known_rating,
            )
            changed |= applied.changed
            if model.rating_stars is not None:
                rating_written = applied.rating_written
        best_written = None
        if plan.best_of_burst is not None:
            best = ours.apply_best_of_burst(xmp, plan.best_of_burst, known=plan.known_best)
            changed |= best.changed
            best_written = plan.best_of_burst if best.ours else None
        return ours.Applied(changed, rating_written, best_written)
    except exiv2.Exiv2Error as exc:
        raise WriteError(
            f"{label}: cannot update its metadata ({_exiv2_message(exc)}); nothing was written"
        ) from None


def _embedded_state(data: bytes, fmt: str, label: str) -> _Embedded:
    """:class:`_Embedded` for a photo that gets a sidecar (e.g. stars set in camera, or the owner's stars
    in XMP the toolkit cannot parse: every value counts, read tolerantly); empty when the format is
    unreadable (some RAW formats), which then leaves the decision to the sidecar."""
    raw_packet: bytes | None = None
    exif: dict[str, int] = {}
    iptc_keywords: list[str] = []
    if fmt in containers.SPLICED_FORMATS:
        try:
            layout = containers.read_layout(data, fmt)
        except (containers.LayoutError, packet.UnrepairableError):
            layout = None
        if layout is not None:
            raw_packet = layout.packet
            entries = containers.exif_ratings(layout.exif)
            exif = {key: entries[tag].value for tag, key in _EXIF_KEYS.items() if tag in entries}
    # A format the library cannot read (some RAWs) leaves the decision to the sidecar.
    with native_log.exiv2_messages() as messages, contextlib.suppress(exiv2.Exiv2Error):
        image = exiv2.ImageFactory.open(data)
        image.readMetadata()
        if raw_packet is None:
            raw_packet = str(image.xmpPacket()).encode("utf-8") or None
            exif_data = image.exifData()
            exif = {k: v for k in _EXIF_KEYS.values() if (v := _exif_int(exif_data, k)) is not None}
        iptc_keywords = [
            str(d.toString()) for d in image.iptcData() if str(d.key()) == "Iptc.Application2.Keywords"
        ]
    _log_native(messages, label)
    values: list[int | None] = []
    rating_texts: list[str] = []
    keywords: dict[str, list[str]] = {}
    if raw_packet:
        rating_texts = packet.property_values(raw_packet, ours.packet_path(ours.XMP_RATING_KEY))
        values += [ours.stars_value(t, percent=False) for t in rating_texts]
        values += [
            ours.stars_value(t, percent=True)
            for t in packet.property_values(raw_packet, ours.packet_path(ours.MS_RATING_KEY))
        ]
        keywords = _keyword_items(raw_packet)
    if ours.EXIF_RATING_KEY in exif:
        values.append(exif[ours.EXIF_RATING_KEY])
    if ours.EXIF_RATING_PERCENT_KEY in exif:
        values.append(ours.stars_from_percent(exif[ours.EXIF_RATING_PERCENT_KEY]))
    if not any(keywords.values()) and iptc_keywords:
        keywords = {ours.SUBJECT_KEY: list(dict.fromkeys(iptc_keywords))}
    rating_text = rating_texts[0] if len(set(rating_texts)) == 1 else None
    if rating_text is None and not rating_texts and exif.get(ours.EXIF_RATING_KEY):
        rating_text = str(exif[ours.EXIF_RATING_KEY])
    if rating_text is not None and ours.stars_value(rating_text, percent=False) in (0, None):
        rating_text = None  # unrated (or unreadable): nothing to carry over
    return _Embedded(tuple(values), rating_text, keywords)


def _keyword_items(raw_packet: bytes) -> dict[str, list[str]]:
    """The owner's keywords in each keyword container of a packet, read tolerantly (musiqd's own left
    out: a new sidecar gets them from the write itself)."""
    try:
        pairs = packet.flatten(raw_packet, ordered=False)
    except packet.UnrepairableError:
        return {}
    out: dict[str, list[str]] = {}
    for key in ours.KEYWORD_CONTAINERS:
        base = ours.packet_path(key)
        items = [v for p, v in pairs if p.startswith(base + "[") and re.fullmatch(r"\[\d+\]", p[len(base) :])]
        if items:
            out[key] = [i for i in dict.fromkeys(items) if not ours.is_any_own_keyword(key, i)]
    return out


# --- verification ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Foreign:
    """Everything in a file's metadata that a write must not change (for files the metadata library
    writes whole: TIFF, and sidecars)."""

    xmp: list[tuple[str, str]]  # flattened by the independent reader
    exif_owned: list[tuple[str, str]]
    exif_user: list[tuple[str, str]]
    iptc: list[tuple[str, str]]
    icc: bytes | None

    @classmethod
    def of(cls, image: Any) -> _Foreign:
        exif = image.exifData()
        raw = str(image.xmpPacket()).encode("utf-8")
        return cls(
            xmp=packet.flatten(raw) if raw.strip() else [],
            exif_owned=ours.foreign_exif(exif, rating_owned=True),
            exif_user=ours.foreign_exif(exif, rating_owned=False),
            iptc=sorted((str(d.key()), str(d.toString())) for d in image.iptcData()),
            icc=bytes(image.iccProfile().data()) if image.iccProfileDefined() else None,
        )

    def differences(self, other: _Foreign, plan: _Plan, *, rating_owned: bool) -> list[str]:
        """What differs from ``other``, by kind; the stars count only when they are the user's."""
        out = (
            ["XMP"]
            if ours.foreign_differences(
                self.xmp,
                other.xmp,
                plan.model_ids,
                rating_owned=rating_owned,
                best_of_burst=plan.best_of_burst is not None,
            )
            else []
        )
        checks = {
            "EXIF": (self.exif_owned, other.exif_owned)
            if rating_owned
            else (self.exif_user, other.exif_user),
            "IPTC": (self.iptc, other.iptc),
            "ICC profile": (self.icc, other.icc),
        }
        return out + [name for name, (mine, theirs) in checks.items() if mine != theirs]


def _check_own_values(xmp: Any, plan: _Plan, applied: ours.Applied) -> list[str]:
    """What of the new values does not read back from ``xmp`` (the toolkit's reading of the new bytes)."""
    problems = []
    for model in plan.models:
        score = model.score
        if ours.read_model_fields(xmp, score.model_id) != dict(score.fields):
            problems.append(f"the {score.model_id} score did not read back")
        subjects = ours.get_items(xmp, ours.SUBJECT_KEY) or []
        if model.keyword is not None and model.keyword.leaf not in subjects:
            problems.append(f"the {score.model_id} keyword did not read back")
    stars = applied.rating_written
    if stars is not None and ours.get_text(xmp, ours.XMP_RATING_KEY) != str(stars):
        problems.append("the rating did not read back")
    if plan.best_of_burst is not None and not ours.best_keyword_reads_back(xmp, plan.best_of_burst):
        problems.append("the best-of-burst keyword did not read back")
    return problems


def _verify(check: Any, plan: _Plan, applied: ours.Applied, before: _Foreign, label: str) -> None:
    """The re-parsed new bytes hold the new values and nothing else changed; else :class:`WriteError`."""
    problems = _check_own_values(check.xmpData(), plan, applied)
    changed = before.differences(_Foreign.of(check), plan, rating_owned=applied.rating_written is not None)
    if changed:
        problems.append(f"other metadata would change ({', '.join(changed)})")
    _refuse(problems, label)


def _verify_spliced(
    layout: containers.Layout,
    new: bytes,
    new_exif: bytes | None,
    old_packet: bytes,
    plan: _Plan,
    applied: ours.Applied,
    label: str,
) -> None:
    """A spliced file: every part but the XMP byte-identical (EXIF as patched), the new XMP holds the new
    values (read by the toolkit) and every other value of the old (read by the independent reader)."""
    problems: list[str] = []
    try:
        after = containers.read_layout(new, layout.fmt)
    except (containers.LayoutError, packet.UnrepairableError) as exc:
        _refuse([f"the new file does not read back ({exc})"], label)
        raise AssertionError from None  # (unreachable: _refuse raises)
    if after.others() != layout.others():
        problems.append("other metadata would change (a segment other than XMP)")
    if after.exif != (new_exif if new_exif is not None else layout.exif):
        problems.append("other metadata would change (EXIF)")
    old_header = containers.vp8x_flags_apart_from_xmp(layout)
    if old_header is not None and containers.vp8x_flags_apart_from_xmp(after) != old_header:
        problems.append("other metadata would change (WebP header)")
    if after.packet is None:
        _refuse(["the XMP did not read back"], label)
    assert after.packet is not None
    problems += _check_own_values(_decode_packet(packet.prepare(after.packet).data), plan, applied)
    changed = ours.foreign_differences(
        packet.flatten(old_packet) if old_packet else [],
        packet.flatten(after.packet),
        plan.model_ids,
        rating_owned=applied.rating_written is not None,
        best_of_burst=plan.best_of_burst is not None,
    )
    if changed:
        names = ", ".join(_short_path(p) for p in changed[:3])
        problems.append(f"other metadata would change (XMP: {names})")
    _refuse(problems, label)


def _short_path(path: str) -> str:
    return re.split(r"[/#]", path.split("[", 1)[0])[-1]


def _refuse(problems: list[str], label: str) -> None:
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
    "DngMode",
    "Mode",
    "SidecarNaming",
    "WritePolicy",
    "WriteResult",
    "WrittenFile",
    "move_sidecars",
    "sidecar_targets",
    "write_best_of_burst",
    "write_score",
    "write_scores",
]
