"""``musiqd score``: score photos, print the results, record them in the index, optionally write tags."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from musiq_daemon.errors import MusiqError, UsageError

if TYPE_CHECKING:
    from musiq_daemon.index import IndexDB
    from musiq_daemon.metadata.writer import WritePolicy, WriteResult
    from musiq_daemon.records import ScoreRecord

# Heavy modules (the model runtime, image decoders, SQLAlchemy) are imported inside the command.


def iter_photos(paths: list[Path]) -> Iterator[Path]:
    """Files as given (any suffix: the decoder says if it cannot read one); directories walked for photos."""
    from musiq_daemon.decode import SUPPORTED_SUFFIXES

    for path in paths:
        if path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path):
                # Hidden folders and NAS metadata folders hold thumbnails, not photos.
                dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "@", "#")))
                for name in sorted(filenames):
                    if not name.startswith(".") and Path(name).suffix.lower() in SUPPORTED_SUFFIXES:
                        yield Path(dirpath) / name
        elif path.exists() or path.is_symlink():
            yield path
        else:
            raise UsageError(f"{path} does not exist")


def score(
    paths: list[Path] = typer.Argument(..., help="Photos or folders (searched recursively)."),
    model: str = typer.Option(None, "--model", "-m", help="Model id (default: koniq)."),
    variant: str = typer.Option(None, "--variant", help="fp32, fp16 or dynamic-int8 (default)."),
    device: str = typer.Option("auto", "--device", help="auto (GPU if usable, else CPU), cpu or gpu."),
    threads: int = typer.Option(2, "--threads", min=1, help="CPU threads for inference."),
    policy: str = typer.Option(None, "--resolution", help="'full' or 'max_side=N' (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per photo (JSON lines)."),
    write: bool = typer.Option(
        False, "--write", help="Write the score into the photos' metadata (XMP/EXIF)."
    ),
    write_mode: str = typer.Option(
        "embed", "--write-mode", help="embed (sidecars for RAW/HEIC), sidecar or index-only."
    ),
    dng: str = typer.Option("sidecar", "--dng", help="DNG: sidecar (master untouched) or embed (Lightroom)."),
    sidecar_naming: str = typer.Option(
        "append", "--sidecar-naming", help="New sidecars: append (IMG.CR2.xmp) or replace (IMG.xmp)."
    ),
    rating_model: str = typer.Option(
        "koniq", "--rating-model", help="Model whose score sets the stars; 'none'."
    ),
    preserve_mtime: bool = typer.Option(
        False, "--preserve-mtime", help="Keep modification times (see README)."
    ),
    no_index: bool = typer.Option(False, "--no-index", help="Do not record the scores in the index."),
    database: str = typer.Option(None, "--db", help="Index database: file path or SQLAlchemy URL."),
) -> None:
    """Score photos with MUSIQ; print path, score, raw score, model, variant and device.

    Scores are recorded in the index (see `musiqd query`) unless --no-index. Photos are only changed
    with --write. Exit code 1 when some photos could not be scored or written (each is reported on stderr).
    """
    from musiq_daemon.api import ScoreFailure, Scorer
    from musiq_daemon.preprocess import ResolutionPolicy

    resolution = ResolutionPolicy.parse(policy) if policy else None
    write_policy = _write_policy(write, write_mode, dng, sidecar_naming, rating_model, preserve_mtime)
    photos = list(iter_photos(paths))
    if not photos:
        raise UsageError("no photos found in the given paths")
    if write_policy is not None:
        from musiq_daemon.metadata.safefile import cleanup_stale_temps

        # Temp files left by a killed earlier run (never a photo: only musiqd's own temp names).
        for folder in sorted({p.parent for p in photos}):
            cleanup_stale_temps(folder)
    scorer = Scorer(model, variant, device=device, threads=threads, policy=resolution)
    db = None
    if not no_index:
        from musiq_daemon.index import open_index

        db = open_index(database)
    failures = 0
    if not as_json:
        typer.echo(_HEADER)
    try:
        # Rows are printed as each photo finishes, so a long run shows progress (and can be piped).
        for result in scorer.score_many(photos):
            if isinstance(result, ScoreFailure):
                failures += 1
                typer.echo(f"musiqd: {result.error.message}", err=True)
                continue
            written: WriteResult | None = None
            if write_policy is not None and result.path is not None:
                try:
                    from musiq_daemon.metadata.writer import write_score

                    known = _known_rating(db, Path(result.path), result.model_id)
                    written = write_score(Path(result.path), result, write_policy, known_rating=known)
                    for note in written.notes:
                        typer.echo(f"musiqd: {note}", err=True)
                except MusiqError as exc:
                    failures += 1
                    typer.echo(f"musiqd: not written: {exc.message}", err=True)
            if db is not None and result.path is not None:
                _record(db, Path(result.path), result, written)
            if as_json:
                data = result.to_dict()
                if written is not None:
                    data["written"] = {
                        "target": written.target,
                        "path": str(written.path) if written.path else None,
                        "changed": written.changed,
                        "rating": written.rating_written,
                        "notes": list(written.notes),
                    }
                typer.echo(json.dumps(data, ensure_ascii=False))
            else:
                typer.echo(_row(result, written))
    finally:
        if db is not None:
            db.close()
    if failures:
        raise typer.Exit(1)


def _write_policy(
    write: bool, mode: str, dng: str, naming: str, rating_model: str, preserve_mtime: bool
) -> WritePolicy | None:
    if not write:
        return None
    from musiq_daemon.metadata.writer import WritePolicy

    if mode not in ("embed", "sidecar", "index-only"):
        raise UsageError(
            f"unknown --write-mode '{mode}': choose embed, sidecar or index-only (or leave out --write)"
        )
    kwargs: dict[str, Any] = {
        "mode": mode, "dng": dng, "sidecar_naming": naming, "preserve_mtime": preserve_mtime,
        "rating_model": None if rating_model.lower() == "none" else rating_model,
    }  # fmt: skip
    return WritePolicy(**kwargs)


def _known_rating(db: IndexDB | None, path: Path, model_id: str) -> int | None:
    """The stars musiqd last wrote for this photo, by the index (None without one)."""
    if db is None:
        return None
    from musiq_daemon.index.records import last_rating_written

    with db.session() as session:
        return last_rating_written(session, path, model_id)


def _record(db: IndexDB, path: Path, record: ScoreRecord, written: WriteResult | None) -> None:
    from musiq_daemon.index.records import record_result

    with db.session() as session:
        record_result(session, path, record, written)


_HEADER = (
    f"{'score':>6} {'raw':>8}  {'model':<22} {'variant':<12} {'device':<6} {'tokens':>6} {'sec':>5}  path"
)


def _row(r: ScoreRecord, written: WriteResult | None = None) -> str:
    model = f"{r.model_id}@{r.model_version}"
    note = ""
    if written is not None:
        note = f"  [{written.target}{'' if written.changed else ', unchanged'}]"
    return (
        f"{r.score:>6.2f} {r.raw:>8.3f}  {model:<22} {r.variant:<12} {r.device:<6} {r.num_tokens:>6} "
        f"{r.duration:>5.2f}  {r.path or '-'}{note}"
    )
