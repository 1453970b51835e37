"""The gallery's pages: photos sorted by score with filters and a histogram, one page per photo, and the
thumbnails. Everything is read from the index with the standard-library reader (or SQLAlchemy for
PostgreSQL), one connection per request; nothing is ever written except thumbnails into their cache.
"""

from __future__ import annotations

import hmac
import math
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response
from starlette.routing import Route
from starlette.templating import Jinja2Templates

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.errors import MusiqError, UsageError
from musiq_daemon.index.paths import decode_path
from musiq_daemon.index.queries import ScoreQuery, parse_date, parse_sort, run_query
from musiq_daemon.index.reader import Reader, open_reader, read_time
from musiq_daemon.web.thumbs import thumbnail

#: Photos per page by default, and at most.
PER_PAGE, MAX_PER_PAGE = 100, 500
#: Bars of the score histogram, and how long it is reused before it is counted again.
BINS = 20
HISTOGRAM_TTL_S = 30.0
COOKIE = "musiqd_token"

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class BadRequestError(Exception):
    """A query parameter the gallery cannot use: a 400 page with the reason."""


def _number(request: Request, name: str, kind: type[float] | type[int]) -> Any:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    try:
        value = kind(text)
    except ValueError:
        raise BadRequestError(f"{name} must be a number (got '{text}')") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequestError(f"{name} must be a finite number")
    return value


def _anchor(request: Request, name: str) -> tuple[float, int] | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    score, _, photo_id = text.partition(":")
    try:
        anchor = (float(score), int(photo_id))
    except ValueError:
        raise BadRequestError(f"{name} must look like 4.25:1234 (got '{text}')") from None
    if not math.isfinite(anchor[0]):
        raise BadRequestError(f"{name} must hold a finite score")
    return anchor


def create_app(
    database: str | None, *, thumbs: Path, token: str | None = None, model: str | None = None
) -> Starlette:
    """The gallery of the index at ``database``; ``token``: required from every request (as ``?token=``
    once, then a cookie), for a server reachable from other machines; ``model``: the model whose scores a
    page shows unless it names another (default: the catalogue's default, koniq)."""
    catalogue = load_catalogue()
    default_model = catalogue.get(model or catalogue.default_model).id
    histograms: dict[str, tuple[float, list[tuple[float, float, int, int]]]] = {}

    def histogram(source: Reader, model_id: str, lo: float, hi: float) -> list[tuple[float, float, int, int]]:
        """The model's histogram, counted again at most every HISTOGRAM_TTL_S seconds (every page has it)."""
        cached = histograms.get(model_id)
        if cached is None or time.monotonic() - cached[0] > HISTOGRAM_TTL_S:
            cached = (time.monotonic(), _histogram(source, model_id, lo, hi))
            histograms[model_id] = cached
        return cached[1]

    def reader() -> Reader:
        return open_reader(database)

    def authorised(request: Request) -> bool:
        if token is None:
            return True
        given = request.query_params.get("token") or request.cookies.get(COOKIE) or ""
        bearer = request.headers.get("authorization", "")
        if bearer.startswith("Bearer "):
            given = bearer[7:]
        return hmac.compare_digest(given.encode(), token.encode())

    def guarded(handler: Any) -> Any:
        async def endpoint(request: Request) -> Response:
            if not authorised(request):
                return HTMLResponse(
                    "<h1>musiqd</h1><p>This gallery needs its token: open it as /?token=...</p>", 401
                )
            try:
                response: Response = await handler(request)
            except (BadRequestError, UsageError) as exc:
                return HTMLResponse(f"<h1>Bad request</h1><p>{_escape(str(exc))}</p>", 400)
            if token is not None and request.query_params.get("token"):
                response.set_cookie(COOKIE, token, httponly=True, samesite="strict")
            return response

        return endpoint

    async def gallery(request: Request) -> Response:
        model = catalogue.get(request.query_params.get("model") or default_model)
        page = _number(request, "page", int)
        page = 1 if page is None else page
        per = min(max(_number(request, "per", int) or PER_PAGE, 1), MAX_PER_PAGE)
        if page < 1:
            raise BadRequestError("page must be at least 1")
        sort = request.query_params.get("sort") or "score"
        by_score = parse_sort(sort)[0] == "score"
        after, before = _anchor(request, "after"), _anchor(request, "before")
        if (after or before) and not by_score:
            raise BadRequestError("after and before page by score: use sort=score or score+")
        under = request.query_params.get("under", "").strip()
        # Sorted by score, a page follows the last (or precedes the first) photo of its neighbour: page
        # 1,000 costs what page 1 does. Other sorts skip rows (OFFSET). One row more tells whether there
        # is a next page.
        keyed = after is not None or before is not None
        q = ScoreQuery(
            model=model.id, min_score=_number(request, "min", float),
            max_score=_number(request, "max", float), under=Path(under) if under else None,
            since=parse_date(request.query_params.get("since"), "since"),
            until=parse_date(request.query_params.get("until"), "until"), sort=sort, limit=per + 1,
            offset=0 if keyed else (page - 1) * per, best_of_burst=request.query_params.get("best") == "1",
            after=after, before=before,
        )  # fmt: skip
        q.validate()
        source = reader()
        try:
            rows = list(run_query(source, q))
            best = _best_of_bursts(source, {r.burst for r in rows[:per] if r.burst is not None})
            total = _fast_count(source, q)
            bars = histogram(source, model.id, model.scale_min, model.scale_max)
            models = [m for m in catalogue.models if _has_scores(source, m)]
        finally:
            source.close()
        more = len(rows) > per
        rows = rows[:per]
        if before is not None:
            rows.reverse()
        keep = {
            k: v
            for k, v in request.query_params.items()
            if k not in ("page", "token", "after", "before") and v
        }

        def link(target: int, anchor: dict[str, str]) -> str:
            return "/?" + urlencode({**keep, **({"page": str(target)} if target > 1 else {}), **anchor})

        next_url = prev_url = None
        if rows and (more or before is not None):
            last = rows[-1]
            next_url = link(page + 1, {"after": f"{last.score!r}:{last.photo_id}"} if by_score else {})
        if rows and page > 1:
            first = rows[0]
            back = {"before": f"{first.score!r}:{first.photo_id}"} if by_score and page > 2 else {}
            prev_url = link(page - 1, back)
        return TEMPLATES.TemplateResponse(
            request,
            "gallery.html",
            {
                "rows": rows, "model": model, "models": models or [model.id], "total": total, "page": page,
                "pages": max(1, math.ceil(total / per)) if total is not None else None, "per": per,
                "params": keep, "histogram": bars, "prev_url": prev_url, "next_url": next_url,
                "model_query": urlencode({"model": model.id}), "best": best,
            },
        )  # fmt: skip

    async def photo(request: Request) -> Response:
        photo_id = int(request.path_params["photo_id"])
        source = reader()
        try:
            found = list(
                source.rows(
                    "SELECT root, rel_path, width, height, format, taken_at, burst_id FROM photos "
                    "WHERE id = :id",
                    {"id": photo_id},
                )
            )
            if not found:
                return HTMLResponse("<h1>Not found</h1><p>No such photo in the index.</p>", 404)
            root, rel, width, height, fmt, taken, burst = found[0]
            scores = list(
                source.rows(
                    "SELECT model_id, score, raw, model_version, variant, scored_at FROM scores "
                    "WHERE photo_id = :id AND is_latest = :latest ORDER BY model_id",
                    {"id": photo_id, "latest": True},
                )
            )
            members: list[Any] = []
            if burst is not None:
                model = catalogue.get(request.query_params.get("model") or default_model).id
                members = list(
                    source.rows(
                        "SELECT p.id, p.rel_path, s.score, (b.best_photo_id = p.id) FROM photos p "
                        "JOIN bursts b ON b.id = p.burst_id LEFT OUTER JOIN scores s ON s.photo_id = p.id "
                        "AND s.model_id = :model AND s.is_latest = :latest WHERE p.burst_id = :burst "
                        "ORDER BY p.taken_at_ms, p.id",
                        {"burst": burst, "model": model, "latest": True},
                    )
                )
        finally:
            source.close()
        return TEMPLATES.TemplateResponse(
            request,
            "photo.html",
            {
                "photo_id": photo_id,
                "path": decode_path(root.rstrip("/") + "/" + rel),
                "size": f"{width}x{height}" if width else "-",
                "format": fmt or "-",
                "taken": read_time(taken),
                "scores": [(m, s, r, v, var, read_time(at)) for m, s, r, v, var, at in scores],
                "burst": burst,
                "members": [(i, Path(decode_path(r)).name, s, bool(best)) for i, r, s, best in members],
            },
        )

    async def thumb(request: Request) -> Response:
        photo_id = int(request.path_params["photo_id"])
        source = reader()
        try:
            found = list(
                source.rows("SELECT root, rel_path, mtime_ns FROM photos WHERE id = :id", {"id": photo_id})
            )
        finally:
            source.close()
        if not found:
            return Response(status_code=404)
        root, rel, mtime_ns = found[0]
        try:
            path = thumbnail(Path(decode_path(root.rstrip("/") + "/" + rel)), photo_id, int(mtime_ns), thumbs)
        except (MusiqError, OSError):
            return Response(status_code=404)  # gone or unreadable: the page shows an empty tile
        return FileResponse(
            path, media_type="image/jpeg", headers={"Cache-Control": "private, max-age=86400"}
        )

    return Starlette(
        routes=[
            Route("/", guarded(gallery)),
            Route("/photo/{photo_id:int}", guarded(photo)),
            Route("/thumb/{photo_id:int}.jpg", guarded(thumb)),
        ]
    )


#: The scores of vanished photos (few), starting from the photos: CROSS JOIN keeps SQLite's planner from
#: walking every score of the model and looking up each photo (hundreds of ms on 100,000 photos without
#: statistics); PostgreSQL plans it as any join.
_VANISHED = "FROM photos p CROSS JOIN scores s WHERE s.photo_id = p.id AND p.missing_since IS NOT NULL"


def _best_of_bursts(source: Reader, bursts: set[int]) -> set[int]:
    """The best photo of each of ``bursts`` (the tiles of a page get a "best of burst" badge)."""
    if not bursts:
        return set()
    names = {f"b{i}": burst for i, burst in enumerate(sorted(bursts))}
    marks = ", ".join(f":{name}" for name in names)
    rows = source.rows(f"SELECT best_photo_id FROM bursts WHERE id IN ({marks})", names)
    return {int(best) for (best,) in rows if best is not None}


def _fast_count(source: Reader, q: ScoreQuery) -> int | None:
    """How many photos a gallery query finds, when the scores' covering index can tell at once (model and
    score range: every latest score in range, less those of vanished photos, which are few); None for
    other filters, whose pages then show no total."""
    if q.under or q.since or q.until or q.best_of_burst or q.missing or q.failed:
        return None
    params: dict[str, Any] = {"model": q.model, "latest": True}
    condition = "s.model_id = :model AND s.is_latest = :latest"
    if q.min_score is not None:
        condition += " AND s.score >= :lo"
        params["lo"] = q.min_score
    if q.max_score is not None:
        condition += " AND s.score <= :hi"
        params["hi"] = q.max_score
    (total,) = next(iter(source.rows(f"SELECT COUNT(*) FROM scores s WHERE {condition}", params)))
    gone_sql = f"SELECT COUNT(*) {_VANISHED} AND {condition}"
    (gone,) = next(iter(source.rows(gone_sql, params)))
    return int(total) - int(gone)


def _histogram(source: Reader, model_id: str, lo: float, hi: float) -> list[tuple[float, float, int, int]]:
    """(from, to, count, percent of the tallest bar) per bin of the model's latest scores, counted by the
    database over the scores' covering index (a gallery of 100,000 photos must not join them all), less
    the scores of vanished photos."""
    width = (hi - lo) / BINS
    # Scores are >= lo, so truncating (SQLite's CAST) is flooring; PostgreSQL's CAST would round.
    if source.dialect == "sqlite":
        binned = "CAST((score - :lo) / :width AS INTEGER)"
    else:
        binned = "CAST(FLOOR((score - :lo) / :width) AS INTEGER)"
    params = {"model": model_id, "latest": True, "lo": lo, "width": width}
    rows = source.rows(
        f"SELECT {binned} AS bin, COUNT(*) FROM scores WHERE model_id = :model AND is_latest = :latest "
        "GROUP BY bin",
        params,
    )
    counts = [0] * BINS
    for index, count in rows:
        counts[min(max(int(index), 0), BINS - 1)] += int(count)
    gone = source.rows(
        f"SELECT s.score {_VANISHED} AND s.model_id = :model AND s.is_latest = :latest", params
    )
    for (score,) in gone:
        counts[min(max(int((score - lo) / width), 0), BINS - 1)] -= 1
    peak = max(counts) or 1
    return [(lo + i * width, lo + (i + 1) * width, c, round(100 * c / peak)) for i, c in enumerate(counts)]


def _has_scores(source: Reader, model_id: str) -> bool:
    return bool(list(source.rows("SELECT 1 FROM scores WHERE model_id = :m LIMIT 1", {"m": model_id})))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
