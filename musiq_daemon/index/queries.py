"""Finding photos by score: the query behind ``musiqd query``, usable from Python.

>>> from musiq_daemon.index import open_reader, ScoreQuery, run_query
>>> reader = open_reader()
>>> for row in run_query(reader, ScoreQuery(model="koniq", min_score=4, limit=100)):
...     print(row.path, row.score)

The SQL is plain text, the same on SQLite and PostgreSQL, and needs no SQLAlchemy on an up-to-date
SQLite index (see ``index.reader``); an open :class:`~musiq_daemon.index.db.IndexDB` works as well.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from musiq_daemon.errors import UsageError
from musiq_daemon.index.paths import decode_path
from musiq_daemon.index.reader import Reader, as_reader, read_time
from musiq_daemon.index.scope import scopes_under

if TYPE_CHECKING:
    from musiq_daemon.index.db import IndexDB

#: Sort keys and their default direction (best, A-Z and newest first).
SORT_KEYS = {"score": "-", "path": "+", "date": "-"}


@dataclass(frozen=True)
class ScoreQuery:
    """What ``musiqd query`` asks. Bounds are inclusive and on the model's reported scale."""

    model: str
    min_score: float | None = None
    max_score: float | None = None
    under: Path | None = None
    since: datetime | None = None  # on the photo's date (capture time when known, else file time)
    until: datetime | None = None
    missing: bool = False  # photos not yet scored by this model
    failed: bool = False  # photos whose scoring by this model failed
    sort: str = "score"  # score|path|date, optionally suffixed + (ascending) or - (descending)
    limit: int | None = None
    offset: int = 0  # rows to skip first (pages of a gallery)
    # Keyset paging by score: rows after (or, reversed, before) the row with this (score, photo id) in the
    # sort order; a gallery's next and previous pages cost the same on page 1 and page 1,000.
    after: tuple[float, int] | None = None
    before: tuple[float, int] | None = None
    include_vanished: bool = False  # also photos whose file has disappeared
    best_of_burst: bool = False  # one photo per burst (its best-scored), and every photo of no burst

    def validate(self) -> None:
        if self.min_score is not None and self.max_score is not None and self.min_score > self.max_score:
            raise UsageError(f"--min {self.min_score:g} is above --max {self.max_score:g}: swap them")
        if self.since is not None and self.until is not None and self.since > self.until:
            raise UsageError("--since is after --until: swap them")
        if self.missing and self.failed:
            raise UsageError("--missing and --failed exclude each other: choose one")
        if (self.missing or self.failed) and (self.min_score is not None or self.max_score is not None):
            raise UsageError("--min/--max need scores: they cannot be combined with --missing or --failed")
        if self.limit is not None and self.limit < 1:
            raise UsageError(f"--limit must be at least 1 (got {self.limit})")
        if self.offset < 0:
            raise UsageError(f"the offset must not be negative (got {self.offset})")
        if (self.after or self.before) and (
            parse_sort(self.sort)[0] != "score" or self.missing or self.failed
        ):
            raise UsageError("paging after or before a photo needs the score sort")
        parse_sort(self.sort)


def parse_date(text: str | None, option: str) -> datetime | None:
    """A user's date or date and time (``2024-05-01``, ``2024-05-01T10:30``), in the local zone unless it
    names one; None for none. Shared by ``musiqd query`` and the gallery."""
    if text is None or not text.strip():
        return None
    try:
        parsed = datetime.fromisoformat(text.strip())
    except ValueError:
        raise UsageError(f"{option} '{text}' is not a date: use YYYY-MM-DD or YYYY-MM-DDTHH:MM") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def parse_sort(text: str) -> tuple[str, bool]:
    """``score-`` -> ("score", descending=True). Plain keys use their natural direction."""
    key, direction = text.rstrip("+-"), text[len(text.rstrip("+-")) :]
    if key not in SORT_KEYS or direction not in ("", "+", "-"):
        raise UsageError(f"unknown sort '{text}': use score, path or date, optionally followed by + or -")
    return key, (direction or SORT_KEYS[key]) == "-"


@dataclass(frozen=True)
class ResultRow:
    """One line of ``musiqd query`` output. Field names are the stable JSON/CSV columns."""

    path: str
    score: float | None
    raw: float | None
    model: str
    model_version: str | None
    variant: str | None
    resolution_policy: str | None
    scored_at: datetime | None
    date: datetime | None
    width: int | None
    height: int | None
    format: str | None
    content_hash: str | None
    error: str | None = None
    burst: int | None = None  # the burst (musiqd cull) the photo belongs to
    photo_id: int | None = None  # the index's id of the photo (not an output column)

    FIELDS = (
        "path", "score", "raw", "model", "model_version", "variant", "resolution_policy", "scored_at",
        "date", "width", "height", "format", "content_hash", "error", "burst",
    )  # fmt: skip

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name in self.FIELDS:
            value = getattr(self, name)
            out[name] = value.isoformat() if isinstance(value, datetime) else value
        return out


def _under_sql(reader: Reader, under: Path, params: dict[str, Any]) -> str:
    """``--under``: the scopes of the folder, as SQL on ``p`` (prefixes compared case-sensitively)."""
    roots = [str(root) for (root,) in reader.rows("SELECT DISTINCT root FROM photos", {})]
    terms = []
    for i, scope in enumerate(scopes_under(under, roots)):
        params |= {f"u{i}": scope.root, f"u{i}p": scope.prefix, f"u{i}n": len(scope.prefix)}
        if scope.rel is None:
            terms.append(f"p.root = :u{i} OR substr(p.root, 1, :u{i}n) = :u{i}p")
        else:
            params[f"u{i}r"] = scope.rel
            terms.append(
                f"p.root = :u{i} AND (p.rel_path = :u{i}r OR substr(p.rel_path, 1, :u{i}n) = :u{i}p)"
            )
    return " OR ".join(f"({term})" for term in terms)


#: The columns of a result row after the path (root, rel_path).
_DETAIL = (
    "s.score, s.raw, s.model_version, s.variant, s.resolution_policy, s.scored_at, p.taken_at, p.width, "
    "p.height, p.format, p.content_hash, j.last_error, p.burst_id, p.id"
)


def _sql(reader: Reader, q: ScoreQuery, *, paths_only: bool = False) -> tuple[str, dict[str, Any]]:
    """The query as portable SQL (SQLite and PostgreSQL) with its parameters."""
    params: dict[str, Any] = {"model": q.model, "latest": True}
    on_score = "s.photo_id = p.id AND s.model_id = :model AND s.is_latest = :latest"
    on_job = "j.photo_id = p.id AND j.model_id = :model"
    where: list[str] = []
    # Each form starts from the table its filter narrows, so the planner can use that table's index.
    if q.missing:
        source = f"photos p LEFT OUTER JOIN scores s ON {on_score} LEFT OUTER JOIN jobs j ON {on_job}"
        where.append("s.id IS NULL")
    elif q.failed:
        source = f"jobs j JOIN photos p ON {on_job} LEFT OUTER JOIN scores s ON {on_score}"
        where.append("j.state = 'failed'")
    else:
        source = f"scores s JOIN photos p ON {on_score} LEFT OUTER JOIN jobs j ON {on_job}"
        if q.min_score is not None:
            where.append("s.score >= :min_score")
            params["min_score"] = q.min_score
        if q.max_score is not None:
            where.append("s.score <= :max_score")
            params["max_score"] = q.max_score
    if not q.include_vanished:
        where.append("p.missing_since IS NULL")
    if q.under is not None:
        where.append(f"({_under_sql(reader, q.under, params)})")
    if q.best_of_burst:
        where.append(
            # A burst without a best yet (none of it scored by the culling model) hides none of its photos.
            "(p.burst_id IS NULL OR p.id = "
            "COALESCE((SELECT b.best_photo_id FROM bursts b WHERE b.id = p.burst_id), p.id))"
        )
    if q.since is not None:
        where.append("p.taken_at >= :since")
        params["since"] = reader.bind_time(q.since)
    if q.until is not None:
        where.append("p.taken_at <= :until")
        params["until"] = reader.bind_time(q.until)
    key, descending = parse_sort(q.sort)
    if q.before is not None:
        descending = not descending  # read backwards from the anchor; the caller reverses the rows
    way = " DESC" if descending else ""
    tie = " DESC" if q.before is not None else ""
    anchor = q.after or q.before
    if anchor is not None:
        params["anchor_score"], params["anchor_id"] = anchor
        beyond = "<" if descending else ">"
        near = "<" if q.before is not None else ">"
        where.append(
            f"(s.score {beyond} :anchor_score OR (s.score = :anchor_score AND p.id {near} :anchor_id))"
        )
    if key == "score" and not (q.missing or q.failed):
        order = f"s.score{way}"
    elif key == "date":
        order = f"p.taken_at{way}"
    else:
        order = f"p.root{way}, p.rel_path{way}"
    columns = "p.root, p.rel_path" if paths_only else f"p.root, p.rel_path, {_DETAIL}"
    sql = f"SELECT {columns} FROM {source}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {order}, p.id{tie}"
    if q.limit is not None or q.offset:
        sql += " LIMIT :limit"  # SQLite needs a LIMIT for an OFFSET: -1 is none (PostgreSQL: ALL)
        params["limit"] = q.limit if q.limit is not None else (-1 if reader.dialect == "sqlite" else None)
    if q.offset:
        sql += " OFFSET :offset"
        params["offset"] = q.offset
    plain = not (q.missing or q.failed or q.under or q.best_of_burst or q.since or q.until or anchor)
    if q.offset and key == "score" and plain and not paths_only:
        # A deferred join: the rows an OFFSET skips are counted in the scores' index alone (less the
        # vanished photos), and only the page's rows are joined and read (a typed page 500 in half the time).
        score_range = "".join(f" AND {term}" for term in where if term.startswith("s.score"))
        vanished = (
            "" if q.include_vanished else
            " AND s.photo_id NOT IN (SELECT v.id FROM photos v WHERE v.missing_since IS NOT NULL)"
        )  # fmt: skip
        ids = (
            "SELECT s.photo_id FROM scores s WHERE s.model_id = :model AND s.is_latest = :latest"
            f"{score_range}{vanished} ORDER BY s.score{way}, s.photo_id LIMIT :limit OFFSET :offset"
        )
        sql = (
            f"SELECT {columns} FROM ({ids}) page JOIN photos p ON p.id = page.photo_id JOIN scores s ON "
            f"{on_score} LEFT OUTER JOIN jobs j ON {on_job} ORDER BY {order}, p.id"
        )
    return sql, params


def iter_paths(source: IndexDB | Reader, q: ScoreQuery, *, batch: int = 5000) -> Iterator[str]:
    """Only the matching paths, in order: the fast form of ``--format paths`` (no other column is read)."""
    q.validate()
    reader = as_reader(source)
    sql, params = _sql(reader, q, paths_only=True)
    for root, rel in reader.rows(sql, params, batch=batch):
        yield decode_path(root.rstrip("/") + "/" + rel)


def run_query(source: IndexDB | Reader, q: ScoreQuery, *, batch: int = 2000) -> Iterator[ResultRow]:
    """Stream the matching photos (constant memory, also for a million rows)."""
    q.validate()
    reader = as_reader(source)
    sql, params = _sql(reader, q)
    model = q.model
    for root, rel, *scored, date, width, height, fmt, chash, error, burst, photo_id in reader.rows(
        sql, params, batch=batch
    ):
        score, raw, version, variant, policy, scored_at = scored
        yield ResultRow(
            decode_path(root.rstrip("/") + "/" + rel), score, raw, model, version, variant, policy,
            read_time(scored_at), read_time(date), width, height, fmt, chash, error, burst, photo_id,
        )  # fmt: skip
