"""``musiqd score``: score photos through the pipeline, print the results, record them in the index,
optionally write them into the photos' metadata. Settings come from the same configuration file and
environment as the daemon; options override them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from musiq_daemon.cli.options import CONFIG_OPTION, DB_OPTION, load
from musiq_daemon.errors import DiskFullError, UsageError

if TYPE_CHECKING:
    from musiq_daemon.pipeline import PhotoOutcome
    from musiq_daemon.records import ScoreRecord

# Heavy modules (the model runtime, image decoders, SQLAlchemy) are imported inside the command.


def score(
    paths: list[Path] = typer.Argument(
        ..., help="Photos or folders (searched recursively).", metavar="PATHS"
    ),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
    models: list[str] = typer.Option(None, "--model", "-m", help="Model id; repeat for several."),
    variant: str = typer.Option(None, "--variant", help="fp32, fp16 or dynamic-int8."),
    device: str = typer.Option(None, "--device", help="auto (GPU if usable, else CPU), cpu or gpu."),
    threads: int = typer.Option(None, "--threads", min=1, help="CPU threads for inference."),
    policy: str = typer.Option(None, "--resolution", help="'full' or 'max_side=N' (default: the model's)."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per photo and model (JSON lines)."),
    write: bool = typer.Option(False, "--write", help="Write the scores into the photos' metadata."),
    write_mode: str = typer.Option(
        None, "--write-mode", help="embed (sidecars for RAW/HEIC), sidecar or index-only."
    ),
    dng: str = typer.Option(None, "--dng", help="DNG: sidecar (master untouched) or embed (Lightroom)."),
    sidecar_naming: str = typer.Option(
        None, "--sidecar-naming", help="New sidecars: append (IMG.CR2.xmp) or replace (IMG.xmp)."
    ),
    rating_model: str = typer.Option(
        None, "--rating-model", help="Model whose score sets the stars; 'none'."
    ),
    preserve_mtime: bool = typer.Option(
        None, "--preserve-mtime", help="Keep modification times (see README)."
    ),
    no_index: bool = typer.Option(False, "--no-index", help="Do not record the scores in the index."),
    force: bool = typer.Option(False, "--force", help="Score photos the index already has scores for."),
) -> None:
    """Score photos (files or folders) with every configured model.

    Settings (models, variant, write mode, star thresholds, roots, database) come from the configuration
    file and environment (`musiqd config show`); options override them. Scores are recorded in the index
    (see `musiqd query`) unless --no-index, and photos the index already has the same scores for are
    skipped unless --force. Photos are only changed with --write. Exit code 1 when some photos could not be
    scored or written (each is reported on stderr).
    """
    from musiq_daemon.discover import PathFilter, iter_photos
    from musiq_daemon.pipeline import Pipeline, build_scorers

    overrides: dict[str, object] = {
        "database": database, "models": models or None, "variant": variant, "device": device,
        "threads": threads, "resolution": policy, "write.mode": write_mode, "write.dng": dng,
        "write.sidecar_naming": sidecar_naming, "write.rating_model": rating_model,
        "write.preserve_mtime": preserve_mtime,
    }  # fmt: skip
    settings = load(config, overrides)
    photos = list(iter_photos(paths, PathFilter.of(settings)))
    if not photos:
        raise UsageError("no photos found in the given paths")
    write_policy = settings.write if write else None
    if write_policy is not None and write_policy.mode != "index-only":
        from musiq_daemon.metadata.safefile import cleanup_stale_temps

        # Temp files left by a killed earlier run (never a photo: only musiqd's own temp names).
        for folder in sorted({p.parent for p in photos}):
            cleanup_stale_temps(folder)
    db = None
    if not no_index:
        from musiq_daemon.index import open_index

        db = open_index(settings.database)
    pipeline = Pipeline(
        build_scorers(settings), write_policy=write_policy, db=db, roots=settings.roots, force=force
    )
    counts = {"scored": 0, "skipped": 0, "failed": 0}
    started = time.monotonic()
    full: list[Path] = []  # photos scored but not written because the disk is full
    processed = 0

    def feed() -> Iterator[Path]:
        for photo in photos:
            if full:
                return  # every further write would fail the same way: finish what is in flight, then stop
            yield photo

    try:
        # Rows are printed as each photo finishes, so a long run shows progress (and can be piped).
        for outcome in pipeline.run(feed()):
            processed += 1
            _show(outcome, as_json, counts)
            if isinstance(outcome.write_error, DiskFullError):
                full.append(outcome.path)
    finally:
        if db is not None:
            db.close()
    elapsed = time.monotonic() - started
    summary = (
        f"musiqd: {counts['scored']} scored, {counts['skipped']} skipped (already scored; --force scores "
        f"them again), {counts['failed']} failed in {elapsed:.1f} s"
    )
    typer.echo(summary, err=True)
    if full:
        left = len(photos) - processed
        unwritten = f"{len(full)} scored but not written"
        stopped = f"stopped with {left} photo{'s' if left != 1 else ''} left; " if left > 0 else ""
        raise DiskFullError(
            f"the disk is full: {stopped}{unwritten}; free some space and run the same command again "
            "(what was written is skipped, the rest is written)"
        )
    if counts["failed"]:
        raise typer.Exit(1)


def _show(outcome: PhotoOutcome, as_json: bool, counts: dict[str, int]) -> None:
    if outcome.skipped:
        counts["skipped"] += 1
        return
    if outcome.error is not None:
        counts["failed"] += 1
        typer.echo(f"musiqd: {outcome.error.message}", err=True)
        return
    counts["scored"] += 1
    for note in outcome.notes:
        typer.echo(f"musiqd: {note}", err=True)
    if outcome.write_error is not None:
        counts["failed"] += 1
        typer.echo(f"musiqd: not written: {outcome.write_error.message}", err=True)
    written = outcome.written
    for record in outcome.records:
        if as_json:
            data: dict[str, Any] = record.to_dict()
            if written is not None:
                data["written"] = {
                    "target": written.target,
                    "path": str(written.path) if written.path else None,
                    "changed": written.changed,
                    "rating": written.rating_written
                    if written.rating_model in (None, record.model_id)
                    else None,
                    "notes": list(written.notes),
                }
            typer.echo(json.dumps(data, ensure_ascii=False))
        else:
            if counts["scored"] == 1 and record is outcome.records[0]:
                typer.echo(_HEADER)  # above the first row (none when every photo was skipped or failed)
            note = ""
            if written is not None:
                note = f"  [{written.target}{'' if written.changed else ', unchanged'}]"
            typer.echo(_row(record) + note)


_HEADER = (
    f"{'score':>6} {'raw':>8}  {'model':<22} {'variant':<12} {'device':<6} {'tokens':>6} {'sec':>5}  path"
)


def _row(r: ScoreRecord) -> str:
    model = f"{r.model_id}@{r.model_version}"
    return (
        f"{r.score:>6.2f} {r.raw:>8.3f}  {model:<22} {r.variant:<12} {r.device:<6} {r.num_tokens:>6} "
        f"{r.duration:>5.2f}  {r.path or '-'}"
    )
