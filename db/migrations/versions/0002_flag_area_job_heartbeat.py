"""Flags get area, bounding box and an updated time (back-filled); jobs get a heartbeat.

The area and box of every existing flag are computed by decoding its stored mask, so the
leaderboard / retrain views can sum flagged pixels without decoding blobs. A flag whose mask
cannot be decoded stops the upgrade with the row named (the revision rolls back as a whole).

Revision ID: 0002
Revises: 0001
Create Date: 2025-01-02
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from anomseg.errors import InputError

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BOX = ("bbox_x0", "bbox_y0", "bbox_x1", "bbox_y1")


def upgrade() -> None:
    # the AMK1 decoder: if db/masks.py ever changes format it must keep reading AMK1
    from db.masks import mask_info

    if op.get_context().as_sql:
        raise RuntimeError("revision 0002 back-fills flag areas from the masks: run it online")
    op.add_column("flags", sa.Column("area", sa.Integer(), nullable=True))
    for col in BOX:
        op.add_column("flags", sa.Column(col, sa.Integer(), nullable=True))
    op.add_column("flags", sa.Column("updated", sa.DateTime(), nullable=True))

    flags = sa.table(
        "flags",
        sa.column("id", sa.Integer()),
        sa.column("mask", sa.LargeBinary()),
        sa.column("created", sa.DateTime()),
        sa.column("area", sa.Integer()),
        sa.column("updated", sa.DateTime()),
        *(sa.column(c, sa.Integer()) for c in BOX),
    )
    conn = op.get_bind()
    rows = conn.execute(sa.select(flags.c.id, flags.c.mask, flags.c.created)).all()
    for fid, blob, created in rows:
        try:
            info = mask_info(blob)
        except InputError as exc:
            raise InputError(f"migration 0002: flags row id={fid}: {exc}") from None
        conn.execute(
            flags.update()
            .where(flags.c.id == fid)
            .values(area=info.area, updated=created, **dict(zip(BOX, info.bbox, strict=True)))
        )

    with op.batch_alter_table("flags") as batch:
        batch.alter_column("area", existing_type=sa.Integer(), nullable=False)
        for col in BOX:
            batch.alter_column(col, existing_type=sa.Integer(), nullable=False)
        batch.alter_column("updated", existing_type=sa.DateTime(), nullable=False)
    op.create_index("ix_flags_image_id_model_id", "flags", ["image_id", "model_id"])

    op.add_column("jobs", sa.Column("heartbeat", sa.DateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "heartbeat")
    op.drop_index("ix_flags_image_id_model_id", table_name="flags")
    with op.batch_alter_table("flags") as batch:
        batch.drop_column("updated")
        for col in BOX:
            batch.drop_column(col)
        batch.drop_column("area")
