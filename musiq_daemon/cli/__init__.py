"""The ``musiqd`` command. Thin: each command module parses options, calls the library, prints.

Exit codes: 0 success; 1 some photos failed; 2 bad usage or configuration; 3 model or
checkpoint problem; 4 unreadable image; 5 device unavailable; 6 conversion failed; 7 download failed;
8 index database unreadable or from a newer musiqd; 9 a file could not be written; 10 read-only file
or folder; 11 disk full; 12 the file changed while musiqd was writing it (retried later); 13 another
musiqd daemon already runs on the same index.
"""

from __future__ import annotations

import logging
import os
import sys

import typer

from musiq_daemon import __version__
from musiq_daemon.cli import config as config_cmd
from musiq_daemon.cli import daemon as daemon_cmd
from musiq_daemon.cli import db as db_cmd
from musiq_daemon.cli import models as models_cmd
from musiq_daemon.cli import query as query_cmd
from musiq_daemon.cli import score as score_cmd
from musiq_daemon.errors import MusiqError

app = typer.Typer(
    name="musiqd",
    help=__doc__,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode=None,
)
app.add_typer(models_cmd.app, name="models")
app.add_typer(db_cmd.app, name="db")
app.add_typer(config_cmd.app, name="config")
app.command("score")(score_cmd.score)
app.command("query")(query_cmd.query)
app.command("stats")(query_cmd.show_stats)
app.command("watch")(daemon_cmd.watch)
app.command("status")(daemon_cmd.status)
app.command("pause")(daemon_cmd.pause)
app.command("resume")(daemon_cmd.resume)
app.command("rescore")(daemon_cmd.rescore)
app.command("notify")(daemon_cmd.notify)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"musiqd {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log what happens (device choice, timings)."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version."
    ),
) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    # TensorFlow (only imported by `models convert`) is noisy on stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        app()
    except MusiqError as exc:
        typer.echo(f"musiqd: error: {exc.message}", err=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        typer.echo("musiqd: interrupted", err=True)
        sys.exit(130)
