"""``musiqd query`` and ``musiqd stats``: find photos by score, see what the index holds."""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.cli.options import PLAIN_DB_OPTION
from musiq_daemon.errors import UsageError

if TYPE_CHECKING:
    from musiq_daemon.index.queries import ResultRow

# The index modules and rich are imported inside the commands: `musiqd --help` and the other
# commands start faster without them. `query` reads an up-to-date SQLite index without SQLAlchemy.

FORMATS = ("table", "json", "jsonl", "csv", "paths", "paths0")


def query(
    min_score: float = typer.Option(None, "--min", help="Lowest score (inclusive, reported scale)."),
    max_score: float = typer.Option(None, "--max", help="Highest score (inclusive)."),
    model: str = typer.Option(None, "--model", "-m", help="Model id (default: koniq)."),
    under: Path = typer.Option(
        None, "--under", help="Only photos at or below this path (absolute or relative)."
    ),
    since: str = typer.Option(None, "--since", help="Photo date on or after (YYYY-MM-DD[THH:MM])."),
    until: str = typer.Option(None, "--until", help="Photo date on or before."),
    missing: bool = typer.Option(False, "--missing", help="Photos not yet scored by the model."),
    failed: bool = typer.Option(False, "--failed", help="Photos the model failed to score, with the reason."),
    sort: str = typer.Option(
        "score", "--sort", help="score (best first), path or date (newest first); + or - to flip."
    ),
    limit: int = typer.Option(None, "--limit", help="At most this many photos."),
    best_of_burst: bool = typer.Option(
        False,
        "--best-of-burst",
        help="One photo per burst (its best, see musiqd cull), and every other photo.",
    ),
    fmt: str = typer.Option("table", "--format", "-f", help="table, json, jsonl, csv, paths or paths0."),
    database: str = PLAIN_DB_OPTION,
) -> None:
    """Find photos by score. Exit codes: 0 found (or none); 2 bad options; 8 index unreadable or too new.

    json/jsonl/csv fields: path, score, raw, model, model_version, variant, resolution_policy, scored_at,
    date, width, height, format, content_hash, error, burst. paths0 separates paths with NUL (for xargs -0).
    """
    from musiq_daemon.index.queries import ScoreQuery, iter_paths, parse_date, run_query
    from musiq_daemon.index.reader import open_reader

    if fmt not in FORMATS:
        raise UsageError(f"unknown format '{fmt}': choose one of {', '.join(FORMATS)}")
    catalogue = load_catalogue()
    model_id = catalogue.get(model or catalogue.default_model).id
    q = ScoreQuery(
        model=model_id, min_score=min_score, max_score=max_score, under=under,
        since=parse_date(since, "--since"), until=parse_date(until, "--until"), missing=missing,
        failed=failed, sort=sort, limit=limit,
        best_of_burst=best_of_burst,
    )  # fmt: skip
    q.validate()
    reader = open_reader(database)
    try:
        if fmt in ("paths", "paths0"):
            end = "\n" if fmt == "paths" else "\0"
            write = sys.stdout.write
            for path in iter_paths(reader, q):
                write(path + end)
        else:
            _emit(run_query(reader, q), fmt)
    finally:
        reader.close()


def _emit(rows: Iterable[ResultRow], fmt: str) -> None:
    out = sys.stdout
    if fmt == "jsonl":
        for row in rows:
            out.write(_json(row.as_dict()) + "\n")
    elif fmt == "json":
        out.write("[")
        for i, row in enumerate(rows):
            out.write(("," if i else "") + "\n  " + _json(row.as_dict()))
        out.write("\n]\n")
    elif fmt == "csv":
        from musiq_daemon.index.queries import ResultRow

        writer = csv.DictWriter(out, fieldnames=ResultRow.FIELDS, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow(row.as_dict())
    else:
        _table(rows)


def _json(data: dict[str, object]) -> str:
    """JSON that is always valid UTF-8: a file name with undecodable bytes is written with \\u escapes
    (json.loads gives back the surrogate-escaped name, os.fsencode the original bytes)."""
    text = json.dumps(data, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(data)
    return text


def _shown(path: str) -> str:
    """A path for people: undecodable bytes shown as \\xNN instead of breaking the terminal."""
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


#: Column widths of the table: "failed" or "10.00"; an ISO date; the largest JPEG or TIFF size.
_WIDTHS = (6, 10, 11)


def _table(rows: Iterable[ResultRow]) -> None:
    """Aligned columns, streamed: a million rows print at once in constant memory (the path column is last
    and free). Plain text off a terminal; on one, the header is bold and failures are red (not with
    NO_COLOR set)."""
    out = sys.stdout
    styled = out.isatty() and not os.environ.get("NO_COLOR")

    def style(text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if styled else text

    score_w, date_w, size_w = _WIDTHS
    count = 0
    for row in rows:
        if not count:
            header = f"{'score':>{score_w}}  {'date':<{date_w}}  {'size':>{size_w}}  path"
            out.write(style(header, "1") + "\n")
        count += 1
        if row.error is not None:
            score = style(f"{'failed':>{score_w}}", "31")
        else:
            score = f"{'-' if row.score is None else f'{row.score:.2f}':>{score_w}}"
        date = row.date.strftime("%Y-%m-%d") if row.date else "-"
        size = f"{row.width}x{row.height}" if row.width else "-"
        path = _shown(row.path) + (f"  ({_shown(row.error)})" if row.error else "")
        out.write(f"{score}  {date:<{date_w}}  {size:>{size_w}}  {path}\n")
    out.flush()
    sys.stderr.write(f"{count} photo{'s' if count != 1 else ''}\n")


def show_stats(database: str = PLAIN_DB_OPTION) -> None:
    """Photos, scores per model, queue, and a score histogram per model."""
    from rich.console import Console

    from musiq_daemon.index.db import open_index
    from musiq_daemon.index.summary import stats

    db = open_index(database)
    try:
        s = stats(db)
    finally:
        db.close()
    console = Console()
    console.print(f"photos: {s.photos}" + (f" (+{s.vanished} no longer on disk)" if s.vanished else ""))
    if s.bursts:
        console.print(
            f"bursts: {s.bursts} of {s.in_bursts} photos (musiqd cull); {s.marked} marked best-of-burst",
            highlight=False,
        )
    for m in s.models:
        console.print(f"\n[bold]{m.model}[/bold]: scored {m.scored}, pending {m.pending}, failed {m.failed}")
        peak = max((count for *_, count in m.histogram), default=0) or 1
        for lo, hi, count in m.histogram:
            bar = "█" * round(40 * count / peak)
            console.print(f"  {lo:5.2f}-{hi:5.2f} {count:>8} {bar}", highlight=False)
