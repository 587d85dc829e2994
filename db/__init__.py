"""Persistence for anomseg: SQLAlchemy 2 models, query helpers, Alembic migrations.

Typical use::

    from db import Store
    store = Store.open(workspace="workspace")          # creates / upgrades <ws>/anomseg.sqlite
    with store.session() as s:                         # one write transaction
        ds = catalog.register_dataset(s, "fs_static", "eval", root)

Query helpers live in modules named for what they hold: ``db.catalog`` (datasets, images,
models, training guard), ``db.flags``, ``db.pastes``, ``db.heads``, ``db.results``, ``db.jobs``;
``db.migrate`` (upgrade / current), ``db.transfer`` (backup / restore / export / import) and
``db.masks`` (compact flag-mask encoding).
"""

from db.engine import Store, make_engine, resolve_url, session_scope
from db.migrate import current, head_revision, upgrade

__all__ = [
    "Store",
    "current",
    "head_revision",
    "make_engine",
    "resolve_url",
    "session_scope",
    "upgrade",
]
