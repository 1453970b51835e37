"""``musiqd db``: the index schema (Alembic migrations)."""

from __future__ import annotations

import typer

from musiq_daemon.cli.options import PLAIN_DB_OPTION

app = typer.Typer(help="Index database schema: show or upgrade it.", no_args_is_help=True)


@app.command()
def upgrade(database: str = PLAIN_DB_OPTION) -> None:
    """Create the index or upgrade it to this version's schema."""
    from musiq_daemon.index.db import current_revision, open_index

    db = open_index(database)
    typer.echo(f"{db.url}: schema {current_revision(db.engine)} (up to date)")
    db.close()


@app.command()
def current(database: str = PLAIN_DB_OPTION) -> None:
    """Print the index's schema revision and this version's."""
    from musiq_daemon.index.db import current_revision, head_revision, open_index

    db = open_index(database, upgrade_schema=False)
    typer.echo(f"{db.url}: schema {current_revision(db.engine)}; this musiqd: {head_revision()}")
    db.close()
