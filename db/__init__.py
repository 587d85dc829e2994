"""Persistence for anomseg: SQLAlchemy 2 models, query helpers, Alembic migrations.

Typical use::

    from db import Store
    store = Store.open(workspace="workspace")          # creates / upgrades <ws>/anomseg.sqlite
    with store.session() as s:                         # one write transaction
        ds = catalog.register_dataset(s, "fs_static", "eval", root)

Query helpers live in modules named for what they hold: ``db.catalog`` (datasets, images,
models, training guard), ``db.flags``, ``db.pastes``, ``db.heads``, ``db.results``, ``db.jobs``;
``db.engine`` (URLs, engines), ``db.store`` (``Store``), ``db.migrate`` (upgrade / current),
``db.transfer`` (backup / restore / export / import) and ``db.masks`` (compact flag-mask
encoding). The store imports only ``anomseg``; building models from its rows is the
application layer's (``workbench.models``).
"""

from db.engine import make_engine, resolve_url
from db.migrate import current, head_revision, upgrade
from db.store import Store, session_scope

__all__ = [
    "Store",
    "current",
    "head_revision",
    "make_engine",
    "resolve_url",
    "session_scope",
    "upgrade",
]
