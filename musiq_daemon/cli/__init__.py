"""The ``musiqd`` command. Thin: each command module parses options, calls the library, prints.

Every error reaches the user as one line on stderr, ``musiqd: error: what went wrong; how to fix it``:
the library's :class:`~musiq_daemon.errors.MusiqError` with its own exit code, and command-line mistakes
(a bad value, an unknown option or command, a missing argument) found by the option parser, with exit
code 2 and a pointer to the command's ``--help``. :func:`main` runs the app in click's non-standalone
mode to see those before they are printed as click's multi-line usage box.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Final, NoReturn

import typer

from musiq_daemon.cli import config as config_cmd
from musiq_daemon.cli import cull as cull_cmd
from musiq_daemon.cli import daemon as daemon_cmd
from musiq_daemon.cli import db as db_cmd
from musiq_daemon.cli import models as models_cmd
from musiq_daemon.cli import query as query_cmd
from musiq_daemon.cli import score as score_cmd
from musiq_daemon.cli import serve as serve_cmd
from musiq_daemon.errors import MusiqError
from musiq_daemon.version import __version__

HELP = """Score photos with MUSIQ, Google's image-quality model: a score of how good each photo
looks, written into its metadata (XMP, or an XMP sidecar) for Lightroom, digiKam, darktable and the like
to filter on, and kept in an index you can search.

\b
Start here:
  musiqd models fetch koniq    install the default model (once)
  musiqd score PHOTOS...       score photos or folders now
  musiqd watch FOLDERS...      keep folders scored as photos arrive (the daemon)
  musiqd query --min 4         find the best photos in the index
  musiqd status                what the daemon is doing

Each command has its own --help.
"""

EPILOG = """Exit codes: 0 success; 1 some photos failed; 2 bad usage or configuration; 3 model or checkpoint
problem; 4 unreadable image; 5 device unavailable; 6 conversion failed; 7 download failed; 8 index
database unreadable or from a newer musiqd; 9 a file could not be written; 10 read-only file or folder;
11 disk full; 12 the file changed while musiqd was writing it (retried later); 13 another musiqd daemon
already watches the same root."""

app = typer.Typer(
    name="musiqd",
    help=HELP,
    epilog=EPILOG,
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
app.command("cull", short_help="Group bursts of near-identical shots; pick the best of each.")(cull_cmd.cull)
app.command("serve", short_help="A read-only web gallery of the index, sorted by score.")(serve_cmd.serve)
# The overview lists the daemon's commands with these summaries (their first sentences are too long).
app.command("watch", short_help="Run the daemon: score photos in folders as they arrive.")(daemon_cmd.watch)
app.command("worker", short_help="Score queued photos without watching (more cores, another machine).")(
    daemon_cmd.worker
)
app.command("status", short_help="Show the daemon's state, queue, speed and last errors.")(daemon_cmd.status)
app.command("pause", short_help="Stop scoring for now (new photos are still queued).")(daemon_cmd.pause)
app.command("resume")(daemon_cmd.resume)
app.command("rescore", short_help="Queue photos of the index for scoring with a model.")(daemon_cmd.rescore)
app.command("notify", short_help="Queue complete photos at once (no quiet period).")(daemon_cmd.notify)


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
    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin and migration chatter is not news


def _click_class(name: str) -> type[Exception]:
    """One of click's exception classes: typer re-exports only ``BadParameter`` (newer typer versions
    vendor click), whose bases are the others."""
    return next(c for c in typer.BadParameter.__mro__ if c.__name__ == name and issubclass(c, Exception))


#: What the option parser raises: a command-line mistake (UsageError, exit code 2: a bad value, an unknown
#: option or command, a missing or extra argument), or another error it found (ClickException).
_CLICK_ERROR: Final = _click_class("ClickException")
_USAGE_ERROR: Final = _click_class("UsageError")


def usage_line(exc: Exception) -> str:
    """An error of the option parser as one line of ours (without the ``musiqd: error:`` prefix): its
    message, and for a command-line mistake where the command's options are explained."""
    error: Any = exc
    message = " ".join(str(error.format_message()).split())
    if message.endswith(".") and not message.endswith(".."):
        message = message[:-1]
    if message[:1].isupper() and not message[1:2].isupper():
        message = message[0].lower() + message[1:]
    if not isinstance(exc, _USAGE_ERROR):
        return message
    command = error.ctx.command_path if error.ctx is not None else "musiqd"
    return f"{message}; see '{command} --help'"


def _fail(message: str, code: int) -> NoReturn:
    typer.echo(f"musiqd: error: {message}", err=True)
    sys.exit(code)


def main() -> None:
    # TensorFlow (only imported by `models convert`) is noisy on stderr.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    try:
        # Not standalone: click's own errors come here instead of being printed as its usage box. In this
        # mode click returns the exit code of `typer.Exit` (also --help, --version) instead of exiting.
        code = app(standalone_mode=False)
    except MusiqError as exc:
        _fail(exc.message, exc.exit_code)
    except _CLICK_ERROR as exc:
        error: Any = exc
        if type(exc).__name__ == "NoArgsIsHelpError":  # `musiqd` or a command group alone: the help
            error.show()
            sys.exit(error.exit_code)
        _fail(usage_line(exc), error.exit_code)
    except typer.Abort:  # click's answer to end of input at a prompt
        typer.echo("musiqd: aborted", err=True)
        sys.exit(1)
    except KeyboardInterrupt:
        typer.echo("musiqd: interrupted", err=True)
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
