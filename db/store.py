"""The store: an engine plus its session factories (write / read-only / retried transactions).

``Store.open`` resolves the URL (``db.engine.resolve_url``), creates a SQLite file's folder and
upgrades the schema (``db.migrate``). Open one per process; never share one across a fork.
"""

from __future__ import annotations

import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db import migrate
from db.engine import READ_ONLY, is_retryable, make_engine, resolve_url, sqlite_path

T = TypeVar("T")


class Store:
    """The engine plus session factories; open one per process (never share across fork)."""

    def __init__(self, url_or_path: str | os.PathLike, **engine_kw: Any) -> None:
        self.engine = make_engine(url_or_path, **engine_kw)
        self.url = self.engine.url.render_as_string(hide_password=False)
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)
        self._read_sessions = sessionmaker(
            self.engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False
        )

    @classmethod
    def open(
        cls,
        url: str | None = None,
        workspace: str | os.PathLike | None = None,
        *,
        upgrade: bool = True,
    ) -> Store:
        """Open (creating the workspace folder) and, by default, upgrade to the newest schema."""
        resolved = resolve_url(url, workspace)
        path = sqlite_path(resolved)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        store = cls(resolved)
        if upgrade:
            migrate.upgrade(store.engine)
        return store

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A write transaction: commit on success, roll back on any exception."""
        with self._sessions() as s, s.begin():
            yield s

    @contextmanager
    def read(self) -> Iterator[Session]:
        """A read-only transaction (deferred BEGIN on SQLite; rolled back at the end)."""
        with self._read_sessions() as s:
            try:
                yield s
            finally:
                s.rollback()

    def transact(self, fn: Callable[[Session], T], retries: int = 5) -> T:
        """Run ``fn(session)`` in a write transaction, re-running it on transient lock errors."""
        for attempt in range(retries + 1):
            try:
                with self.session() as s:
                    return fn(s)
            except (DBAPIError, sqlite3.OperationalError) as exc:
                if attempt == retries or not is_retryable(exc):
                    raise
                time.sleep(0.05 * (2**attempt) * (1 + random.random()))
        raise AssertionError("unreachable")

    def close(self) -> None:
        """Release pooled connections."""
        self.engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextmanager
def session_scope(store_or_engine: Store | Engine) -> Iterator[Session]:
    """A committed-or-rolled-back session for a Store or a bare Engine."""
    if isinstance(store_or_engine, Store):
        with store_or_engine.session() as s:
            yield s
        return
    with Session(store_or_engine, expire_on_commit=False) as s, s.begin():
        yield s
