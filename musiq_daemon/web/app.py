"""The gallery's pages: photos sorted by score with filters and a histogram, one page per photo, and the
thumbnails. Everything is read from the index with the standard-library reader (or SQLAlchemy for
PostgreSQL), one connection per request; nothing is ever written except thumbnails into their cache.
"""

from __future__ import annotations

import hmac
import math
from datetime import datetime
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
from musiq_daemon.index.queries import ScoreQuery, count_query, parse_sort, run_query
from musiq_daemon.index.reader import Reader, open_reader, read_time
from musiq_daemon.web.thumbs import thumbnail

#: Photos per page by default, and at most.
PER_PAGE, MAX_PER_PAGE = 100, 500
#: Bars of the score histogram.
BINS = 20
COOKIE = "musiqd_token"

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))


class BadRequestError(Exception):
    pass


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


def _date(request: Request, name: str) -> datetime | None:
    text = request.query_params.get(name, "").strip()
    if not text:
        return None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise BadRequestError(f"{name} must be a date like 2024-05-01 (got '{text}')") from None
    return parsed if parsed.tzinfo else parsed.astimezone()


def create_app(database: str | None, *, thumbs: Path, token: str | None = None) -> Starlette:
    """The gallery of the index at ``database``; ``token``: required from every request (as ``?token=``
    once, then a cookie), for a server reachable from other machines."""
    catalogue = load_catalogue()

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
        model = catalogue.get(request.query_params.get("model") or catalogue.default_model)
        page = _number(request, "page", int)
        page = 1 if page is None else page
        per = min(max(_number(request, "per", int) or PER_PAGE, 1), MAX_PER_PAGE)
        if page < 1:
            raise BadRequestError("page must be at least 1")
        sort = request.query_params.get("sort") or "score"
        parse_sort(sort)
        under = request.query_params.get("under", "").strip()
        q = ScoreQuery(
            model=model.id, min_score=_number(request, "min", float),
            max_score=_number(request, "max", float), under=Path(under) if under else None,
            since=_date(request, "since"), until=_date(request, "until"), sort=sort, limit=per,
            offset=(page - 1) * per, best_of_burst=request.query_params.get("best") == "1",
        )  # fmt: skip
        q.validate()
        source = reader()
        try:
            rows = list(run_query(source, q))
            total = count_query(source, q)
            histogram = _histogram(source, model.id, model.scale_min, model.scale_max)
            models = [m for m in catalogue.models if _has_scores(source, m)]
        finally:
            source.close()
        pages = max(1, math.ceil(total / per))
        keep = {k: v for k, v in request.query_params.items() if k not in ("page", "token") and v}
        return TEMPLATES.TemplateResponse(
            request,
            "gallery.html",
            {
                "rows": rows, "model": model, "models": models or [model.id], "total": total, "page": page,
                "pages": pages, "per": per, "params": keep, "histogram": histogram,
                "prev_url": f"/?{urlencode({**keep, 'page': page - 1})}" if page > 1 else None,
                "next_url": f"/?{urlencode({**keep, 'page': page + 1})}" if page < pages else None,
                "model_query": urlencode({"model": model.id}),
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
                model = catalogue.get(request.query_params.get("model") or catalogue.default_model).id
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


def _histogram(source: Reader, model_id: str, lo: float, hi: float) -> list[tuple[float, float, int, int]]:
    """(from, to, count, percent of the tallest bar) per bin of the model's latest scores, counted by the
    database (a covering index scan; a gallery of 100,000 photos must not fetch them all)."""
    width = (hi - lo) / BINS
    # Scores are >= lo, so truncating (SQLite's CAST) is flooring; PostgreSQL's CAST would round.
    binned = (
        "CAST((s.score - :lo) / :width AS INTEGER)"
        if source.dialect == "sqlite"
        else ("CAST(FLOOR((s.score - :lo) / :width) AS INTEGER)")
    )
    rows = source.rows(
        f"SELECT {binned} AS bin, COUNT(*) FROM scores s JOIN photos p ON p.id = s.photo_id "
        "WHERE s.model_id = :model AND s.is_latest = :latest AND p.missing_since IS NULL GROUP BY bin",
        {"model": model_id, "latest": True, "lo": lo, "width": width},
    )
    counts = [0] * BINS
    for index, count in rows:
        counts[min(max(int(index), 0), BINS - 1)] += int(count)
    peak = max(counts) or 1
    return [(lo + i * width, lo + (i + 1) * width, c, round(100 * c / peak)) for i, c in enumerate(counts)]


def _has_scores(source: Reader, model_id: str) -> bool:
    return bool(list(source.rows("SELECT 1 FROM scores WHERE model_id = :m LIMIT 1", {"m": model_id})))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
