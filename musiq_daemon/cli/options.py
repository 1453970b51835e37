"""The options several commands share, declared once, and loading the configuration they point to."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from musiq_daemon.config import Config

CONFIG_HELP = (
    "Configuration file (default: $MUSIQD_CONFIG, $XDG_CONFIG_HOME/musiqd/config.toml, "
    "/etc/musiqd/config.toml; the first that exists)."
)
DB_HELP = "Index database: a file path or SQLAlchemy URL (default: $MUSIQD_DATABASE_URL or the data dir)."

CONFIG_OPTION = typer.Option(None, "--config", "-c", help=CONFIG_HELP, dir_okay=False)
#: ``--db`` for commands that read the configuration (it overrides the configured database).
DB_OPTION = typer.Option(None, "--db", help=DB_HELP + " Overrides the configuration's database.")
#: ``--db`` for the index commands that need no configuration.
PLAIN_DB_OPTION = typer.Option(None, "--db", help=DB_HELP)

# Scoring options of the daemon (`watch`) and of `worker`, which score the same queue the same way.
MODELS_OPTION = typer.Option(None, "--model", "-m", help="Model ID; repeat for several.")
VARIANT_OPTION = typer.Option(None, "--variant", help="Model variant (fp32, fp16, dynamic-int8).")
DEVICE_OPTION = typer.Option(None, "--device", help="auto, cpu or gpu.")
THREADS_OPTION = typer.Option(None, "--threads", help="Inference threads per worker.")
WORKERS_OPTION = typer.Option(None, "--workers", help="Photos scored at the same time (one thread each).")
WRITE_MODE_OPTION = typer.Option(None, "--write-mode", help="embed, sidecar or index-only.")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Log every file decision (debug).")


def load(config: Path | None, overrides: dict[str, object] | None = None) -> Config:
    """The configuration: file, then environment, then these overrides (None values are left out)."""
    from musiq_daemon.config import load_config

    return load_config(config, overrides=overrides or {})
