"""Alembic environment for the anomseg store.

Each revision runs in its own transaction (``transaction_per_migration``) with transactional DDL
forced on: with the engine's own BEGIN (db/engine.py) SQLite rolls DDL back too, so a revision that
fails or is killed leaves the database at the previous revision. ``render_as_batch`` lets
revisions alter SQLite tables by copy-and-move.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy.engine import Connection

from db.engine import make_engine
from db.models import Base

config = context.config


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",
        transaction_per_migration=True,
        transactional_ddl=True,
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    """Run offline (SQL script) or online migrations."""
    if context.is_offline_mode():
        context.configure(
            url=config.get_main_option("sqlalchemy.url"),
            target_metadata=Base.metadata,
            literal_binds=True,
            render_as_batch=True,
            transaction_per_migration=True,
        )
        with context.begin_transaction():
            context.run_migrations()
        return
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    engine = config.attributes.get("engine") or make_engine(
        config.get_main_option("sqlalchemy.url")
    )
    try:
        with engine.connect() as conn:
            _run(conn)
    finally:
        if "engine" not in config.attributes:
            engine.dispose()


main()
