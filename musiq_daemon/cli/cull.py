"""``musiqd cull``: group bursts of near-identical shots and pick the best-scored photo of each."""

from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from musiq_daemon.cli.options import CONFIG_OPTION, DB_OPTION, WRITE_MODE_OPTION, load

if TYPE_CHECKING:
    from sqlalchemy import ColumnElement

    from musiq_daemon.config import Config
    from musiq_daemon.index.db import IndexDB


def cull(
    paths: list[Path] = typer.Argument(None, help="Only photos at or below these paths (default: all)."),
    model: str = typer.Option(
        None, "--model", "-m", help="Model whose score picks the best (default: the first configured model)."
    ),
    gap: float = typer.Option(
        None, "--gap", help="Most seconds between two frames of a burst (default: burst_gap, 3)."
    ),
    max_distance: int = typer.Option(
        None,
        "--distance",
        help="Most perceptual-hash bits (of 63) two frames may differ by (default: burst_distance, 18).",
    ),
    write: bool = typer.Option(
        False, "--write", help="Mark each burst's best photo with the keyword MUSIQ|best-of-burst."
    ),
    write_mode: str = WRITE_MODE_OPTION,
    as_json: bool = typer.Option(False, "--json", help="One JSON object per burst."),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
) -> None:
    """Group bursts (same camera, seconds apart, alike) among the indexed photos; the best-scored photo of
    each is what `musiqd query --best-of-burst` lists, and with --write it gets the keyword
    MUSIQ|best-of-burst where its score is written (taken away again from a photo that is no longer the
    best). Score the photos first (musiqd score or the daemon).
    """
    from musiq_daemon.catalogue import load_catalogue
    from musiq_daemon.cull import group_bursts
    from musiq_daemon.daemon.queue import under_condition
    from musiq_daemon.errors import UsageError
    from musiq_daemon.index.bursts import load_shots, record_bursts, with_burst_mates
    from musiq_daemon.index.db import open_index

    if gap is not None and gap <= 0:
        raise UsageError(f"--gap must be a positive number of seconds (got {gap:g})")
    if max_distance is not None and not 0 <= max_distance <= 63:
        raise UsageError(f"--distance must be between 0 and 63 bits (got {max_distance})")
    settings = load(config, {"database": database, "write.mode": write_mode})
    catalogue = load_catalogue()
    model_id = catalogue.get(model or settings.models[0]).id
    db = open_index(settings.database, create=False)
    try:
        where = None
        if paths:
            from sqlalchemy import or_

            where = or_(*(under_condition(db, p) for p in paths))

        def progress(done: int, total: int) -> None:
            if done % 500 == 0 or done == total:
                print(
                    f"musiqd: read {done}/{total} photos", file=sys.stderr, end="\r" if done < total else "\n"
                )

        with db.session() as session:
            shots = load_shots(
                session, model_id, where=where, progress=progress if sys.stderr.isatty() else None
            )
            if where is not None:  # a burst reaching beyond the paths is regrouped whole
                shots = with_burst_mates(session, model_id, shots)
            groups = group_bursts(
                shots,
                gap_s=settings.burst_gap if gap is None else gap,
                max_distance=settings.burst_distance if max_distance is None else max_distance,
            )
            bursts = record_bursts(session, shots, groups, model_id)
            lines: list[dict[str, Any]] = []
            for burst, group in zip(bursts, groups, strict=True):
                lines.append(
                    {
                        "burst": burst.id,
                        "camera": burst.camera,
                        "first_taken": burst.first_taken.isoformat() if burst.first_taken else None,
                        "last_taken": burst.last_taken.isoformat() if burst.last_taken else None,
                        "model": model_id,
                        "best": str(next(s.path for s in group if s.photo_id == burst.best_photo_id))
                        if burst.best_photo_id is not None
                        else None,
                        "photos": [{"path": str(s.path), "score": s.score} for s in group],
                    }
                )
        if write and where is not None:  # the photos there, and the bursts they are in (regrouped whole)
            from sqlalchemy import or_, select

            from musiq_daemon.index.models import Photo

            touched = select(Photo.burst_id).where(where, Photo.burst_id.is_not(None)).correlate(None)
            where = or_(where, Photo.burst_id.in_(touched))
        marked = _mark(db, settings, where) if write else None
    finally:
        db.close()
    for line in lines:
        if as_json:
            typer.echo(json.dumps(line, ensure_ascii=False))
            continue
        # In this machine's time zone, as the photographer's clock showed it (the index keeps UTC).
        first = line["first_taken"]
        when = datetime.fromisoformat(first).astimezone().strftime("%Y-%m-%d %H:%M:%S %z") if first else "?"
        camera = line["camera"] or "unknown camera"
        typer.echo(f"burst {line['burst']}: {len(line['photos'])} photos, {camera}, {when}")
        for photo in line["photos"]:
            mark = "best" if photo["path"] == line["best"] else "    "
            score = "-" if photo["score"] is None else f"{photo['score']:.2f}"
            typer.echo(f"  {mark} {score:>5}  {photo['path']}")
    grouped = sum(len(line["photos"]) for line in lines)
    typer.echo(
        f"musiqd: {len(lines)} burst{'s' if len(lines) != 1 else ''} of {grouped} photos among {len(shots)}; "
        f"{len(shots) - grouped} photos stand alone",
        err=True,
    )
    if marked is not None:
        typer.echo(marked, err=True)
    elif lines:
        typer.echo(
            "musiqd: add --write to mark each burst's best photo with the keyword MUSIQ|best-of-burst",
            err=True,
        )


def _mark(db: IndexDB, settings: Config, where: ColumnElement[bool] | None) -> str:
    """Write the keyword changes the bursts call for; one line saying what was done."""
    from musiq_daemon.best_of_burst import mark_best_photos

    policy = settings.write
    if policy.mode == "index-only":
        return "musiqd: write mode index-only: no keyword written"
    if not policy.best_of_burst:
        return "musiqd: best_of_burst = false in the configuration: no keyword written"
    outcome = mark_best_photos(db, policy, where=where, max_file_mb=settings.max_file_mb)
    for reason in outcome.refused.values():
        typer.echo(f"musiqd: not written: {reason}", err=True)
    parts = [f"{outcome.added} marked as the best of their burst", f"{outcome.removed} no longer marked"]
    if outcome.unchanged:
        parts.append(f"{outcome.unchanged} left as they were (already right, or the keyword is the user's)")
    if outcome.later:
        parts.append(f"{outcome.later} busy or gone (run musiqd cull --write again)")
    if outcome.refused:
        parts.append(f"{len(outcome.refused)} not written")
    return "musiqd: best-of-burst keyword: " + ", ".join(parts)
