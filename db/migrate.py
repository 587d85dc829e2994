"""Programmatic Alembic: upgrade, current revision, known revisions.

The Alembic configuration is built in code from the packaged ``db/migrations`` folder, so
upgrades work from an installed package without an ini file.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect, text

from db.engine import make_engine, sqlite_path

SCRIPT_LOCATION = Path(__file__).resolve().parent / "migrations"
Target = str | os.PathLike | Engine | Any  # Any: a db.store.Store (its .engine)
PG_LOCK_KEY = 0x616E6F6D  # "anom": pg_advisory_lock key held while migrating


def alembic_config(script_location: str | os.PathLike | None = None) -> Config:
    """An Alembic Config pointing at the packaged migrations (or another script folder)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location or SCRIPT_LOCATION))
    return cfg


def _engine(target: Target) -> tuple[Engine, bool]:
    if isinstance(target, Engine):
        return target, False
    if isinstance(getattr(target, "engine", None), Engine):  # a Store (which imports this module)
        return target.engine, False
    return make_engine(target), True


def known_revisions(script_location: str | os.PathLike | None = None) -> list[str]:
    """Every revision id of the migration scripts, oldest first."""
    script = ScriptDirectory.from_config(alembic_config(script_location))
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def head_revision(script_location: str | os.PathLike | None = None) -> str:
    """The newest revision id."""
    script = ScriptDirectory.from_config(alembic_config(script_location))
    head = script.get_current_head()
    assert head is not None
    return head


@contextmanager
def migration_lock(engine: Engine) -> Iterator[None]:
    """Serialise migrations across processes (the app and a worker may start together).

    Alembic reads the current revision before its per-revision transactions begin, so two
    processes upgrading an empty database at once would both try to create the tables.
    """
    path = sqlite_path(engine.url)
    if path is not None:
        import fcntl

        with open(f"{path}.migrate-lock", "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
    elif engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_advisory_lock(:k)"), {"k": PG_LOCK_KEY})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": PG_LOCK_KEY})
                conn.commit()
    else:
        yield


def upgrade(
    target: Target, revision: str = "head", script_location: str | os.PathLike | None = None
) -> str | None:
    """Upgrade the database to ``revision`` (one transaction per revision); returns the new one."""
    engine, owned = _engine(target)
    try:
        if revision == "head" and current(engine) == head_revision(script_location):
            return current(engine)  # the common case: nothing to do, no lock needed
        with migration_lock(engine):
            cfg = alembic_config(script_location)
            cfg.attributes["engine"] = engine
            command.upgrade(cfg, revision)
        return current(engine)
    finally:
        if owned:
            engine.dispose()


def downgrade(
    target: Target, revision: str, script_location: str | os.PathLike | None = None
) -> str | None:
    """Downgrade the database to ``revision``."""
    engine, owned = _engine(target)
    try:
        with migration_lock(engine):
            cfg = alembic_config(script_location)
            cfg.attributes["engine"] = engine
            command.downgrade(cfg, revision)
        return current(engine)
    finally:
        if owned:
            engine.dispose()


def current(target: Target) -> str | None:
    """The database's current revision (None for an empty / non-anomseg database)."""
    engine, owned = _engine(target)
    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return None
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        if owned:
            engine.dispose()
