"""Head versions may be of kind "oe" (outlier exposure: a fine-tuned copy of the model's last
layers, versioned like a head). Only the CHECK constraint on ``head_versions.kind`` changes; no
column, no data.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

OLD_KINDS = ("stats", "features")
NEW_KINDS = ("stats", "features", "oe")


def _in(col: str, values: tuple[str, ...]) -> str:
    return f"{col} IN ({', '.join(repr(v) for v in values)})"


def _set_kinds(kinds: tuple[str, ...]) -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot alter a CHECK constraint: batch mode copies the table (rows included)
        with op.batch_alter_table("head_versions", recreate="always") as batch:
            batch.drop_constraint(op.f("ck_head_versions_kind"), type_="check")
            batch.create_check_constraint("kind", _in("kind", kinds))
        return
    # PostgreSQL alters the constraint in place; copying the table would drop the primary key
    # that other tables' foreign keys reference
    name = op.f("ck_head_versions_kind")
    op.drop_constraint(name, "head_versions", type_="check")
    op.create_check_constraint(name, "head_versions", _in("kind", kinds))


def upgrade() -> None:
    _set_kinds(NEW_KINDS)


def downgrade() -> None:
    if op.get_bind().exec_driver_sql("SELECT 1 FROM head_versions WHERE kind = 'oe'").first():
        raise RuntimeError("cannot downgrade below 0003: head versions of kind 'oe' exist")
    _set_kinds(OLD_KINDS)
