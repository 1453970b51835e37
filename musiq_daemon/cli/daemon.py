"""The daemon's commands: ``watch`` runs it; ``status``, ``pause``, ``resume``, ``rescore`` and ``notify``
talk to it through the index (they work while it runs, from any user that can open the index)."""

from __future__ import annotations

import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from musiq_daemon.catalogue import load_catalogue
from musiq_daemon.cli.options import (
    CONFIG_OPTION,
    DB_OPTION,
    DEVICE_OPTION,
    MODELS_OPTION,
    THREADS_OPTION,
    VARIANT_OPTION,
    VERBOSE_OPTION,
    WORKERS_OPTION,
    WRITE_MODE_OPTION,
    load,
)
from musiq_daemon.errors import UsageError

if TYPE_CHECKING:
    from musiq_daemon.config import Config
    from musiq_daemon.discover import PathFilter
    from musiq_daemon.index import IndexDB

# Heavy modules (watchdog, SQLAlchemy, the model runtime) are imported inside the commands.

#: A state row older than this (3 heartbeats) belongs to a daemon that is gone (or on a hung machine).
STALE_AFTER_S = 15.0


def _open(config: Config, *, create: bool = False) -> IndexDB:
    """The configured index. Only commands that put photos into it create it: ``status``, ``pause``,
    ``resume`` and ``rescore`` on an index that does not exist say so (run as another user, the default
    index is that user's, not the daemon's)."""
    from musiq_daemon.index import open_index

    return open_index(config.database, create=create)


def _scoring(
    database: str | None,
    models: list[str] | None,
    variant: str | None,
    device: str | None,
    threads: int | None,
    workers: int | None,
    write_mode: str | None,
) -> dict[str, object]:
    """The overrides of the scoring options `watch` and `worker` share."""
    return {
        "database": database, "models": models or None, "variant": variant, "device": device,
        "threads": threads, "workers": workers, "write.mode": write_mode,
    }  # fmt: skip


def watch(
    roots: list[Path] = typer.Argument(None, help="Folders to watch (default: roots in the configuration)."),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
    models: list[str] = MODELS_OPTION,
    variant: str = VARIANT_OPTION,
    device: str = DEVICE_OPTION,
    threads: int = THREADS_OPTION,
    workers: int = WORKERS_OPTION,
    resolution: str = typer.Option(None, "--resolution", help='"max_side=N" or "full".'),
    write_mode: str = WRITE_MODE_OPTION,
    observer: str = typer.Option(None, "--observer", help="auto, native or poll."),
    poll_interval: float = typer.Option(None, "--poll-interval", help="Seconds between polls."),
    quiet_period: float = typer.Option(
        None, "--quiet-period", help="Seconds a new file must stay unchanged."
    ),
    quiet_hours: str = typer.Option(None, "--quiet-hours", help='No scoring in these hours: "22:00-06:00".'),
    rescan_interval: float = typer.Option(None, "--rescan-interval", help="Seconds between full rescans."),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Run the daemon in the foreground: scan the roots, watch them, score new photos.

    Settings come from the configuration file and the environment; these options override both (see
    `musiqd config show`). Logs go to stderr (journald-friendly under systemd). Stop with SIGTERM or
    Ctrl-C; SIGHUP reloads the configuration (options given here stay). One daemon per root (exit code 13
    for a second one on the same root); `musiqd worker` adds scoring processes to the same queue.
    """
    from musiq_daemon.daemon.service import run_service
    from musiq_daemon.daemon.systemd import configure_logging

    overrides = _scoring(database, models, variant, device, threads, workers, write_mode) | {
        "resolution": resolution, "observer": observer, "poll_interval": poll_interval,
        "quiet_period": quiet_period, "quiet_hours": quiet_hours, "rescan_interval": rescan_interval,
    }  # fmt: skip
    if roots:
        overrides["roots"] = roots
    loaded = load(config, overrides)
    configure_logging(verbose)
    code = run_service(loaded, reload=lambda: load(config, overrides))
    raise typer.Exit(code)


def worker(
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
    models: list[str] = MODELS_OPTION,
    variant: str = VARIANT_OPTION,
    device: str = DEVICE_OPTION,
    threads: int = THREADS_OPTION,
    workers: int = WORKERS_OPTION,
    write_mode: str = WRITE_MODE_OPTION,
    path_map: list[str] = typer.Option(
        None, "--path-map", help="NAS_PATH=LOCAL_PATH: where this machine sees the index's photos; repeat."
    ),
    verbose: bool = VERBOSE_OPTION,
) -> None:
    """Score photos that the daemon queued, without watching anything (more cores, another machine).

    Takes jobs from the index's queue (PostgreSQL for several machines; SQLite for several processes on
    one) and runs the same pipeline as the daemon. A worker that dies loses its photos to the others within
    a minute. `musiqd pause` pauses it, `musiqd status` lists it. Stop with SIGTERM or Ctrl-C.
    """
    from musiq_daemon.daemon.standalone import run_workers
    from musiq_daemon.daemon.systemd import configure_logging
    from musiq_daemon.paths import PathMap

    overrides = _scoring(database, models, variant, device, threads, workers, write_mode) | {
        "path_map": path_map or None
    }
    loaded = load(config, overrides)
    configure_logging(verbose)
    raise typer.Exit(run_workers(loaded, PathMap.parse(loaded.path_map)))


def status(
    as_json: bool = typer.Option(False, "--json", help="One JSON object."),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
) -> None:
    """Show the daemon's state, queue, throughput, ETA, last errors, models and device."""
    from musiq_daemon.daemon import registry
    from musiq_daemon.daemon.lock import daemon_running
    from musiq_daemon.daemon.queue import queue_counts, recent_failures
    from musiq_daemon.daemon.state import read_state
    from musiq_daemon.index.paths import decode_path

    db = _open(load(config, {"database": database}))
    try:
        row = read_state(db)
        counts = queue_counts(db)
        failures = recent_failures(db, limit=5)
        watched = (
            [Path(decode_path(r)) for r in json.loads(row.roots)] if row is not None and row.roots else []
        )
        running_here = daemon_running(db.url, watched)
        helpers = registry.live(db)
    finally:
        db.close()
    info: dict[str, Any] = {"running": False, "state": "never started", "queue": counts}
    if row is not None:
        beat = row.heartbeat_at
        age = (datetime.now(UTC) - beat).total_seconds() if beat is not None else None
        if running_here is None or row.host != socket.gethostname():
            # No lock file to ask (a daemon on another machine sharing a database server, or another
            # user's data directory): a recent heartbeat tells.
            running = row.state != "stopped" and age is not None and age < STALE_AFTER_S
        else:
            running = running_here
        rate = row.done / row.busy_s * 60 if row.busy_s > 0 else None
        backlog = counts["pending"] + counts["running"]
        info.update(
            running=running,
            state=row.state if running else "stopped" if row.state == "stopped" else "not running",
            pid=row.pid,
            host=row.host,
            started_at=_iso(row.started_at),
            heartbeat_at=_iso(beat),
            heartbeat_age_s=round(age, 1) if age is not None else None,
            paused=row.paused,
            models=row.models.split(",") if row.models else [],
            device=row.device,
            roots=json.loads(row.roots) if row.roots else [],
            scored=row.done,
            throughput_per_min=round(rate, 2) if rate is not None else None,
            eta_s=round(backlog / rate * 60) if rate and backlog else None,
            message=row.message,
        )
    info["workers"] = [
        {
            "host": w.host, "pid": w.pid, "kind": w.kind, "state": w.state, "device": w.device,
            "models": w.models.split(",") if w.models else [], "path_map": w.path_map, "scored": w.done,
            "failed": w.failed,
            "throughput_per_min": round(w.done / w.busy_s * 60, 2) if w.busy_s > 0 else None,
            "heartbeat_at": _iso(w.heartbeat_at),
            "roots": [decode_path(r) for r in json.loads(w.roots)] if w.roots else [],
        }
        for w in helpers
    ]  # fmt: skip
    info["errors"] = [
        {"path": str(f.path), "model": f.model_id, "state": f.state, "error": f.error, "when": _iso(f.when)}
        for f in failures
    ]
    if as_json:
        typer.echo(json.dumps(info, ensure_ascii=False))
        return
    typer.echo(_status_text(info))


def _status_text(info: dict[str, Any]) -> str:
    lines = []
    state = info["state"]
    if info["running"]:
        state += f" (pid {info['pid']} on {info['host']}, since {info['started_at']})"
    elif info.get("heartbeat_at"):
        state += f" (last seen {info['heartbeat_at']})"
    if info.get("paused") and info["state"] != "paused":
        state += ", pause requested"
    lines.append(f"state:      {state}")
    q = info["queue"]
    lines.append(
        f"queue:      {q['pending']} pending, {q['running']} running, {q['failed']} failed, {q['done']} done"
    )
    if info.get("throughput_per_min") is not None:
        eta = f", ETA {_duration(info['eta_s'])}" if info.get("eta_s") else ""
        lines.append(
            f"throughput: {info['throughput_per_min']:.1f} photos/min ({info['scored']} scored){eta}"
        )
    if "models" in info:
        lines.append(f"models:     {', '.join(info['models']) or '-'}; device: {info['device'] or '-'}")
        lines.append(f"roots:      {', '.join(info['roots']) or '-'}")
    if info.get("message"):
        lines.append(f"note:       {info['message']}")
    for w in info.get("workers", []):
        if w["kind"] == "watcher":
            lines.append(
                f"watcher:    {w['host']} pid {w['pid']} ({w['state']}): {', '.join(w['roots']) or '-'}, "
                f"last beat {w['heartbeat_at']}"
            )
            continue
        speed = f"{w['throughput_per_min']:.1f} photos/min" if w["throughput_per_min"] is not None else "idle"
        mapped = f", paths {w['path_map']}" if w["path_map"] else ""
        lines.append(
            f"worker:     {w['host']} pid {w['pid']} ({w['kind']}, {w['state']}): {', '.join(w['models'])} "
            f"on {w['device'] or '-'}, {w['scored']} scored, {speed}, last beat {w['heartbeat_at']}{mapped}"
        )
    if info["errors"]:
        lines.append("last errors:")
        lines += [f"  {e['when']}  {e['model']}  {e['path']}: {e['error']}" for e in info["errors"]]
    return "\n".join(lines)


def _iso(when: datetime | None) -> str | None:
    return when.astimezone().isoformat(timespec="seconds") if when is not None else None


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    if minutes < 60:
        return f"{max(minutes, 1)} min"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def pause(config: Path | None = CONFIG_OPTION, database: str = DB_OPTION) -> None:
    """Stop scoring (the running photo finishes); new photos are still found and queued."""
    _set_paused(config, database, paused=True)


def resume(config: Path | None = CONFIG_OPTION, database: str = DB_OPTION) -> None:
    """Resume scoring after `musiqd pause` (quiet hours still apply)."""
    _set_paused(config, database, paused=False)


def _set_paused(config: Path | None, database: str | None, *, paused: bool) -> None:
    from musiq_daemon.daemon import registry
    from musiq_daemon.daemon.state import set_paused

    db = _open(load(config, {"database": database}))
    try:
        set_paused(db, paused)
        running = sum(1 for row in registry.live(db) if row.kind != "watcher")
    finally:
        db.close()
    word = "paused" if paused else "resumed"
    if running:
        typer.echo(f"{word}: {running} scoring process{'es' if running != 1 else ''} follow within seconds")
    else:
        typer.echo(f"{word}: the daemon follows when it starts (no scoring process is running)")


def rescore(
    paths: list[Path] = typer.Argument(None, help="Only photos at or below these paths."),
    model: str = typer.Option(..., "--model", "-m", help="Model id to score with."),
    missing: bool = typer.Option(False, "--missing", help="Photos without a score of this model."),
    all_photos: bool = typer.Option(False, "--all", help="Every photo, scored or not."),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
) -> None:
    """Queue photos of the index for a model (the running daemon scores them)."""
    from musiq_daemon.daemon.queue import rescore as queue_rescore

    if missing == all_photos:
        raise UsageError("choose one of --missing and --all")
    load_catalogue().get(model)  # an unknown id is a one-line error, not jobs nobody can ever run
    loaded = load(config, {"database": database})
    if model not in loaded.models:
        typer.echo(
            f"musiqd: note: {model} is not among the configured models ({', '.join(loaded.models)}): "
            "the daemon scores its jobs only once it is added",
            err=True,
        )
    db = _open(loaded)
    try:
        targets = [Path(os.path.abspath(p)) for p in paths or []]
        queued = queue_rescore(db, model, mode="missing" if missing else "all", paths=targets)
    finally:
        db.close()
    typer.echo(f"queued {queued} photos for {model}")


def notify(
    paths: list[Path] = typer.Argument(..., help="Complete photo files to queue now."),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
) -> None:
    """Queue photos that another tool knows are complete (no waiting for the watcher's quiet period).

    Each file must be under a root of the configuration or of the running daemon. Exit code 1 when some
    could not be queued (each is reported).
    """
    from musiq_daemon.daemon.scan import ingest_file
    from musiq_daemon.daemon.state import read_state
    from musiq_daemon.discover import PathFilter
    from musiq_daemon.index.paths import decode_path

    loaded = load(config, {"database": database})
    db = _open(loaded, create=True)
    problems = 0
    try:
        row = read_state(db)
        roots = list(loaded.roots)
        if row is not None and row.roots:
            roots += [
                Path(decode_path(r)) for r in json.loads(row.roots) if Path(decode_path(r)) not in roots
            ]
        path_filter = PathFilter.of(loaded)
        for given in paths:
            path = Path(os.path.abspath(given))
            root = next((r for r in roots if path.is_relative_to(r) and path != r), None)
            problem = _notify_problem(path, root, path_filter)
            if problem is not None:
                problems += 1
                typer.echo(f"musiqd: {path}: {problem}", err=True)
                continue
            with db.session() as session:
                outcome = ingest_file(session, path, roots=roots, models=loaded.models, hash_new=True)
            typer.echo(f"{outcome}: {path}")
    finally:
        db.close()
    if problems:
        raise typer.Exit(1)


def _notify_problem(path: Path, root: Path | None, path_filter: PathFilter) -> str | None:
    from musiq_daemon.paths import outside_root

    if root is None:
        return "not under a watched root"
    real = outside_root(path, root)
    if real is not None:
        return f"its folder is {real} through a symbolic link, outside the root {root}: not queued"
    if not path.is_file() or path.is_symlink():
        return "not a regular file"
    if not path_filter.path_wanted(str(path), str(root)):
        return "not a photo the daemon scores (excluded, or not a photo format)"
    return None
