"""Engines: URLs, SQLite set-up, retryable errors (the ``Store`` over them is ``db.store``).

SQLite (the default, ``<workspace>/anomseg.sqlite``) is set up for several writer processes:
WAL journal, foreign keys on, a 30 s busy timeout, and SQLAlchemy's documented recipe that takes
transaction control away from the ``sqlite3`` driver (``isolation_level = None``) and emits
``BEGIN`` itself. Write transactions emit ``BEGIN IMMEDIATE``: the write lock is taken up front,
waiting on the busy timeout, so a transaction never has to upgrade a read snapshot to a write
lock later (the case where SQLite gives up at once with "database is locked"). Read-only sessions
(``Store.read()``) use a plain deferred ``BEGIN`` so readers never queue behind writers. The same
recipe makes SQLite DDL transactional, which is what lets a failed migration roll back.

PostgreSQL is used when given a URL (``postgresql+psycopg2://...``).
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError

from anomseg import settings
from anomseg.errors import InputError

DB_FILENAME = "anomseg.sqlite"
BUSY_TIMEOUT_S = 30.0
READ_ONLY = "anomseg_read_only"  # execution option: deferred BEGIN on SQLite


def default_workspace() -> Path:
    """``$ANOMSEG_WORKSPACE`` or ``./workspace`` (``anomseg.settings``)."""
    return settings.workspace_dir()


def resolve_url(url: str | None = None, workspace: str | os.PathLike | None = None) -> str:
    """The database URL from an explicit URL, a workspace, ``$ANOMSEG_DB_URL``, or the default."""
    if url:
        return url
    if workspace is None and settings.db_url():
        return settings.db_url()
    ws = Path(workspace) if workspace is not None else default_workspace()
    return sqlite_url(ws / DB_FILENAME)


def sqlite_url(path: str | os.PathLike) -> str:
    """``sqlite:///<absolute path>``."""
    return f"sqlite:///{Path(path).expanduser().resolve()}"


def to_url(url_or_path: str | os.PathLike) -> URL:
    """Parse a URL; a bare filesystem path means a SQLite file."""
    s = os.fspath(url_or_path)
    if "://" not in s:
        return make_url(sqlite_url(s))
    try:
        return make_url(s)
    except ArgumentError as exc:
        raise InputError(f"database URL {s!r} is not valid ({exc})") from None


def sqlite_path(url_or_path: str | os.PathLike | URL) -> Path | None:
    """The file of a SQLite URL, or None for other backends / in-memory SQLite."""
    url = url_or_path if isinstance(url_or_path, URL) else to_url(url_or_path)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _is_locked(exc: BaseException) -> bool:
    msg = str(exc).lower()
    return "database is locked" in msg or "database table is locked" in msg or "busy" in msg


def _setup_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: sqlite3.Connection, _record: Any) -> None:
        dbapi_conn.isolation_level = None  # we emit BEGIN ourselves (see module doc)
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
        cur.execute("PRAGMA foreign_keys = ON")
        if engine.url.database not in (None, "", ":memory:"):
            mode = cur.execute("PRAGMA journal_mode").fetchone()[0]
            if str(mode).lower() != "wal":
                cur.execute("PRAGMA journal_mode = WAL")
            cur.execute("PRAGMA synchronous = NORMAL")  # safe with WAL, much faster commits
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        stmt = "BEGIN" if read_only else "BEGIN IMMEDIATE"
        raw = conn.connection.dbapi_connection
        # The busy timeout already waits 30 s; a retry with jitter covers the rare BUSY that
        # SQLite returns without waiting (e.g. while another connection switches to WAL).
        for attempt in range(6):
            try:
                raw.execute(stmt)
                return
            except sqlite3.OperationalError as exc:
                if not _is_locked(exc) or attempt == 5:
                    raise
                time.sleep(0.05 * (2**attempt) * (1 + random.random()))


def make_engine(url_or_path: str | os.PathLike, **kw: Any) -> Engine:
    """An Engine for a URL or a SQLite file path, configured for concurrent writers."""
    url = to_url(url_or_path)
    backend = url.get_backend_name()
    if backend == "sqlite":
        path = sqlite_path(url)
        if path is not None:
            if not path.parent.is_dir():
                raise InputError(f"database folder {path.parent} does not exist")
        connect_args = {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}
        connect_args.update(kw.pop("connect_args", {}))
        engine = create_engine(url, connect_args=connect_args, **kw)
        _setup_sqlite(engine)
        return engine
    if backend == "postgresql":
        kw.setdefault("pool_pre_ping", True)
        return create_engine(url, **kw)
    raise InputError(f"database backend {backend!r} is not supported; use sqlite or postgresql")


def is_retryable(exc: BaseException) -> bool:
    """A transient concurrency failure worth re-running the whole transaction for."""
    if isinstance(exc, OperationalError | sqlite3.OperationalError) and _is_locked(exc):
        return True
    if isinstance(exc, DBAPIError):
        code = getattr(exc.orig, "pgcode", None)
        return code in ("40001", "40P01")  # serialization failure, deadlock detected
    return False
