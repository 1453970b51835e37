"""Alembic environment for the musiqd index.

musiqd runs migrations itself (``musiqd db upgrade``, or automatically when it opens an older index) and
hands over its engine in ``config.attributes["engine"]``. Running ``alembic`` by hand also works with
``-x url=sqlite:////path/to/index.sqlite3``.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine

from musiq_daemon.index.models import Base

config = context.config
target_metadata = Base.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        url = context.get_x_argument(as_dictionary=True).get("url") or config.get_main_option(
            "sqlalchemy.url"
        )
        engine = create_engine(url)
    with engine.begin() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=True,  # SQLite cannot ALTER most things: batch mode rebuilds tables
            compare_type=True,
        )
        context.run_migrations()


if context.is_offline_mode():
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata)
    with context.begin_transaction():
        context.run_migrations()
else:
    run_migrations_online()
