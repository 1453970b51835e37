"""``musiqd db``: the index schema (Alembic migrations)."""

from __future__ import annotations

import typer

from musiq_daemon.cli.query import DB_HELP

app = typer.Typer(help="Index database schema: show or upgrade it.", no_args_is_help=True)


@app.command()
def upgrade(database: str = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Create the index or upgrade it to this version's schema."""
    from musiq_daemon.index.db import current_revision, open_index

    db = open_index(database)
    typer.echo(f"{db.url}: schema {current_revision(db.engine)} (up to date)")
    db.close()


@app.command()
def current(database: str = typer.Option(None, "--db", help=DB_HELP)) -> None:
    """Print the index's schema revision and this version's."""
    from musiq_daemon.index.db import current_revision, head_revision, open_index

    db = open_index(database, upgrade_schema=False)
    typer.echo(f"{db.url}: schema {current_revision(db.engine)}; this musiqd: {head_revision()}")
    db.close()
