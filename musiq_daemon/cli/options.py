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


def load(config: Path | None, overrides: dict[str, object] | None = None) -> Config:
    """The configuration: file, then environment, then these overrides (None values are left out)."""
    from musiq_daemon.config import load_config

    return load_config(config, overrides=overrides or {})
