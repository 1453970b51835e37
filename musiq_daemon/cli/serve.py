"""``musiqd serve``: the web gallery of the index."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

import typer

from musiq_daemon.cli.options import CONFIG_OPTION, DB_OPTION, load
from musiq_daemon.errors import UsageError


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (others need --token)."),
    port: int = typer.Option(8470, "--port", help="TCP port."),
    token: str = typer.Option(
        None, "--token", help="Required from every visitor (?token=... once); default $MUSIQD_WEB_TOKEN."
    ),
    thumbs: Path = typer.Option(
        None, "--thumbs", help="Thumbnail cache folder (default: <data dir>/thumbs)."
    ),
    config: Path | None = CONFIG_OPTION,
    database: str = DB_OPTION,
) -> None:
    """A read-only web gallery of the index: photos sorted by score, filters, a histogram, each photo's
    scores and burst. Listens on 127.0.0.1 unless told otherwise; any other address needs a token."""
    from musiq_daemon.paths import data_dir

    secret = token or os.environ.get("MUSIQD_WEB_TOKEN") or None
    if not _loopback(host) and not secret:
        raise UsageError(
            f"--host {host} lets other machines in: give --token (or $MUSIQD_WEB_TOKEN), a secret visitors "
            "open the gallery with once"
        )
    if not 0 < port < 65536:
        raise UsageError(f"--port must be between 1 and 65535 (got {port})")
    try:
        import uvicorn

        from musiq_daemon.web.app import create_app
    except ImportError as exc:
        raise UsageError(
            f"the gallery needs the web extra ({exc.name} is missing): .venv/bin/pip install -e '.[web]'"
        ) from None
    settings = load(config, {"database": database})
    from musiq_daemon.index.reader import open_reader

    open_reader(settings.database).close()  # a missing or unreadable index: one line now, not per page
    app = create_app(
        settings.database, thumbs=thumbs or data_dir() / "thumbs", token=secret, model=settings.models[0]
    )
    typer.echo(f"musiqd gallery on http://{host}:{port}/" + ("?token=..." if secret else ""), err=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
