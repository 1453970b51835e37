"""One photo's whole path, the same for ``musiqd score``, the daemon's worker, ``rescore`` and ``notify``:

    decode (once) -> patch per model -> infer with every model -> one metadata write carrying every
    model's values -> one index transaction

>>> pipeline = Pipeline({"koniq": Scorer("koniq"), "ava": Scorer("ava")}, write_policy=WritePolicy(), db=db)
>>> for outcome in pipeline.run(paths):
...     print(outcome.path, [r.score for r in outcome.records])

Callers differ only in where photos come from and how outcomes are shown. The photo is decoded once, at
the size the most demanding model needs (each model then resizes to its own policy). Photos whose latest
scores already match every model (same version, variant and resolution policy; the file unchanged by
size and modification time, else by content hash) are skipped unless ``force``. The photo is checked
again after inference: a file that changed meanwhile is reported, and nothing is written or recorded.

A failed metadata write does not lose the score: it is recorded with where it was (not) written, and
:attr:`PhotoOutcome.write_error` says why. Decoding and inference errors record nothing.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from musiq_daemon.api import Prepared, Scorer, overlapped_with_save
from musiq_daemon.config import Config
from musiq_daemon.errors import MusiqError
from musiq_daemon.index.db import IndexDB
from musiq_daemon.index.records import already_scored, last_rating_written, record_results
from musiq_daemon.metadata.writer import WritePolicy, WriteResult, write_scores
from musiq_daemon.preprocess import ResolutionPolicy
from musiq_daemon.records import ScoreRecord


@dataclass(frozen=True)
class PhotoOutcome:
    """What the pipeline did with one photo."""

    path: Path
    records: tuple[ScoreRecord, ...] = ()  # one per model, in the pipeline's model order
    written: WriteResult | None = None
    error: MusiqError | None = (
        None  # not scored (unreadable, corrupt, changed while scored): nothing recorded
    )
    write_error: MusiqError | None = None  # scored and recorded, but the metadata was not written
    skipped: bool = False  # already scored by every model: nothing done
    notes: tuple[str, ...] = field(default_factory=tuple)  # one line each, for the owner

    @property
    def ok(self) -> bool:
        return self.error is None and self.write_error is None


class ChangedWhileScoringError(MusiqError):
    """The file changed between decoding and writing: its score describes an older version."""


@dataclass(frozen=True)
class Decoded:
    """A photo decoded once and patched for each of ``models``."""

    path: Path
    models: tuple[str, ...]
    prepared: tuple[Prepared, ...]
    signature: tuple[int, int]  # (size, mtime_ns) before decoding


@dataclass(frozen=True)
class Scored:
    """Every model's score of a photo, not yet written or recorded (its tokens already released)."""

    path: Path
    signature: tuple[int, int]  # (size, mtime_ns) before decoding
    records: tuple[ScoreRecord, ...]


def check_unchanged(path: Path, signature: tuple[int, int]) -> None:
    """Raise :class:`ChangedWhileScoringError` when the file is no longer the one that was decoded."""
    try:
        info = path.stat()
    except OSError as exc:
        raise MusiqError(f"{path}: it went away while it was scored ({exc.strerror or exc})") from None
    if (info.st_size, info.st_mtime_ns) != signature:
        raise ChangedWhileScoringError(f"{path}: it changed while it was scored; score it again")


class Pipeline:
    """Every configured model over one photo at a time (see the module docstring)."""

    def __init__(
        self,
        scorers: Mapping[str, Scorer],
        *,
        write_policy: WritePolicy | None = None,
        db: IndexDB | None = None,
        roots: Sequence[Path] = (),
        force: bool = False,
    ) -> None:
        if not scorers:
            raise ValueError("a pipeline needs at least one model")
        self.scorers = dict(scorers)
        self.write_policy = write_policy
        self.db = db
        self.roots = [Path(os.path.abspath(r)) for r in roots]
        self.force = force

    # --- the stages -----------------------------------------------------------------------------------------

    def prepare(self, path: Path, models: Sequence[str] | None = None) -> Decoded:
        """Decode ``path`` once and patch it for each of ``models`` (default: every model): the CPU work
        that overlaps the previous photo's inference. Raises :class:`~musiq_daemon.errors.MusiqError`."""
        chosen = list(self.scorers) if models is None else list(models)
        scorers = [self.scorers[m] for m in chosen]
        sides = [s.min_long_side for s in scorers]
        # One decode serves every model: at full resolution if any model wants it, else the largest side.
        side = None if None in sides else max(s for s in sides if s is not None)
        try:
            info = path.stat()
        except OSError as exc:
            raise MusiqError(f"{path}: cannot read it ({exc.strerror or exc})") from None
        t0 = time.perf_counter()
        decoded = scorers[0].decode(path, min_long_side=side)
        decode_s = time.perf_counter() - t0
        prepared = tuple(s.patch(decoded, str(path), decode_s) for s in scorers)
        return Decoded(path, tuple(chosen), prepared, (info.st_size, info.st_mtime_ns))

    def infer(self, item: Decoded) -> tuple[ScoreRecord, ...]:
        """Every model's score of a prepared photo. Raises :class:`~musiq_daemon.errors.MusiqError`."""
        try:
            return tuple(
                self.scorers[model].infer(prepared)
                for model, prepared in zip(item.models, item.prepared, strict=True)
            )
        except ValueError as exc:  # the runtime's own complaint about an input it cannot run
            raise MusiqError(f"{item.path}: inference failed: {exc}") from None

    def decode(self, path: Path) -> Decoded | PhotoOutcome:
        """:meth:`prepare` for :meth:`run`: a skipped or unreadable photo is already its outcome."""
        path = Path(path)
        try:
            if not self.force and self.db is not None and self._already_scored(path):
                return PhotoOutcome(path, skipped=True)
            return self.prepare(path)
        except MusiqError as exc:
            return PhotoOutcome(path, error=exc)

    def score(self, item: Decoded | PhotoOutcome) -> Scored | PhotoOutcome:
        """Infer with every model (the calling thread's part of :meth:`run`)."""
        if isinstance(item, PhotoOutcome):
            return item
        try:
            return Scored(item.path, item.signature, self.infer(item))
        except MusiqError as exc:
            return PhotoOutcome(item.path, error=exc)

    def save(self, item: Scored | PhotoOutcome) -> PhotoOutcome:
        """Check the file is still the one scored, write once, record once."""
        if isinstance(item, PhotoOutcome):
            return item
        path, records = item.path, item.records
        try:
            check_unchanged(path, item.signature)
        except MusiqError as exc:
            return PhotoOutcome(path, error=exc)
        written, write_error = self._write(path, records)
        if self.db is not None:
            with self.db.session() as session:
                record_results(session, path, records, written, roots=self.roots)
        notes = written.notes if written is not None else ()
        return PhotoOutcome(path, records, written, write_error=write_error, notes=notes)

    def finish(self, item: Decoded | PhotoOutcome) -> PhotoOutcome:
        """Infer with every model, write once, record once."""
        return self.save(self.score(item))

    def process(self, path: Path) -> PhotoOutcome:
        return self.finish(self.decode(path))

    def run(self, paths: Iterable[Path]) -> Iterator[PhotoOutcome]:
        """Every photo in order: each decoded while the previous one is in inference, and written and
        recorded while the next one is."""
        return overlapped_with_save(paths, self.decode, self.score, self.save)

    # --- helpers --------------------------------------------------------------------------------------------

    def _already_scored(self, path: Path) -> bool:
        assert self.db is not None
        wanted = [
            (s.installed.spec.id, s.installed.version, s.installed.variant, s.policy.describe())
            for s in self.scorers.values()
        ]
        policy = self.write_policy
        must_be_written = policy is not None and policy.mode != "index-only"
        with self.db.session() as session:
            return already_scored(session, path, wanted, roots=self.roots, written=must_be_written)

    def _write(
        self, path: Path, records: Sequence[ScoreRecord]
    ) -> tuple[WriteResult | None, MusiqError | None]:
        policy = self.write_policy
        if policy is None:
            return None, None
        known = None
        if self.db is not None and policy.rating_model is not None:
            with self.db.session() as session:
                known = last_rating_written(session, path, policy.rating_model, roots=self.roots)
        try:
            limits = next(iter(self.scorers.values())).max_file_mb  # one configuration built them all
            return write_scores(path, records, policy, known_rating=known, max_file_mb=limits), None
        except MusiqError as exc:
            return None, exc


def build_scorers(config: Config) -> dict[str, Scorer]:
    """One loaded scorer per configured model, as the configuration says (variant, device, threads,
    resolution, pixel limit). An inference engine is not shared between threads: one set per worker."""
    policy = ResolutionPolicy.parse(config.resolution) if config.resolution else None
    return {
        model: Scorer(
            model,
            config.variant,
            device=config.device,
            threads=config.threads,
            policy=policy,
            max_pixels=config.max_pixels,
            max_file_mb=config.max_file_mb,
        )
        for model in config.models
    }
