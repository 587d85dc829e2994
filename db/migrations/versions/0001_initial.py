"""Initial schema: datasets, images, models, jobs, head versions, samples, pastes, flags, results.

Revision ID: 0001
Revises:
Create Date: 2025-01-01
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _in(col: str, values: tuple[str, ...]) -> str:
    return f"{col} IN ({', '.join(repr(v) for v in values)})"


def _ts(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "datasets",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("role", sa.String(16), nullable=False),
        sa.Column("root", sa.Text(), nullable=False),
        sa.Column("layout", sa.String(64), nullable=False),
        sa.Column("label_remap_json", sa.Text()),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
        sa.UniqueConstraint("name", name="uq_datasets_name"),
        sa.CheckConstraint(_in("role", ("train", "synthetic", "eval", "heldout")), name="role"),
    )
    op.create_table(
        "images",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_images"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_images_dataset_id_datasets"
        ),
        sa.UniqueConstraint("dataset_id", "path", name="uq_images_dataset_id_path"),
    )
    op.create_index("ix_images_sha256", "images", ["sha256"])
    op.create_table(
        "models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("architecture", sa.String(100), nullable=False),
        sa.Column("checkpoint_path", sa.Text()),
        sa.Column("checkpoint_sha256", sa.String(64)),
        sa.Column("input_h", sa.Integer()),
        sa.Column("input_w", sa.Integer()),
        sa.Column("meta_json", sa.Text()),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_models"),
        sa.UniqueConstraint("name", name="uq_models_name"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("params_json", sa.Text()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("log_tail", sa.Text(), nullable=False),
        sa.Column("error", sa.Text()),
        sa.Column("result_json", sa.Text()),
        sa.Column("worker_id", sa.String(128)),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        _ts("created"),
        _ts("started", nullable=True),
        _ts("finished", nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.CheckConstraint(
            _in("status", ("queued", "running", "done", "failed", "cancelled")),
            name="status",
        ),
        sa.CheckConstraint("progress >= 0 AND progress <= 1", name="progress"),
    )
    op.create_index("ix_jobs_status_id", "jobs", ["status", "id"])
    op.create_table(
        "head_versions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer()),
        sa.Column("hparams_json", sa.Text()),
        sa.Column("checkpoint_path", sa.Text()),
        sa.Column("checkpoint_sha256", sa.String(64)),
        sa.Column("snapshot_json", sa.Text()),
        sa.Column("metrics_json", sa.Text()),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("job_id", sa.Integer()),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_head_versions"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_head_versions_model_id_models"
        ),
        sa.ForeignKeyConstraint(
            ["parent_id"], ["head_versions.id"], name="fk_head_versions_parent_id_head_versions"
        ),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_head_versions_job_id_jobs"),
        sa.UniqueConstraint("model_id", "version", name="uq_head_versions_model_id_version"),
        sa.CheckConstraint(_in("kind", ("stats", "features")), name="kind"),
        sa.CheckConstraint(_in("status", ("training", "ready", "failed")), name="status"),
    )
    op.create_index(
        "uq_head_versions_active",
        "head_versions",
        ["model_id"],
        unique=True,
        sqlite_where=sa.text("active = 1"),
        postgresql_where=sa.text("active"),
    )
    op.create_table(
        "synthetic_samples",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("background_id", sa.Text(), nullable=False),
        sa.Column("seed", sa.Integer()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("render_json", sa.Text()),
        _ts("created"),
        _ts("updated"),
        sa.PrimaryKeyConstraint("id", name="pk_synthetic_samples"),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_synthetic_samples_dataset_id_datasets"
        ),
        sa.UniqueConstraint("uid", name="uq_synthetic_samples_uid"),
        sa.CheckConstraint(_in("status", ("proposed", "accepted", "rejected")), name="status"),
    )
    op.create_index(
        "ix_synthetic_samples_dataset_id_status", "synthetic_samples", ["dataset_id", "status"]
    )
    op.create_table(
        "pastes",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("sample_id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(64), nullable=False),
        sa.Column("current_number", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_pastes"),
        sa.ForeignKeyConstraint(
            ["sample_id"],
            ["synthetic_samples.id"],
            name="fk_pastes_sample_id_synthetic_samples",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("sample_id", "key", name="uq_pastes_sample_id_key"),
    )
    op.create_table(
        "paste_revisions",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("paste_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("parent_number", sa.Integer()),
        sa.Column("record_json", sa.Text()),
        sa.Column("content_hash", sa.String(64)),
        sa.Column("author", sa.String(100), nullable=False),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_paste_revisions"),
        sa.ForeignKeyConstraint(
            ["paste_id"],
            ["pastes.id"],
            name="fk_paste_revisions_paste_id_pastes",
            ondelete="CASCADE",
        ),
        sa.UniqueConstraint("paste_id", "number", name="uq_paste_revisions_paste_id_number"),
    )
    # CHECK names get the ck_<table>_ prefix from the metadata's naming convention.
    # 0001's flags: no area / box / updated yet (0002 adds them and back-fills from the masks)
    op.create_table(
        "flags",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("uid", sa.String(32), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("mask", sa.LargeBinary(), nullable=False),
        sa.Column("width", sa.Integer(), nullable=False),
        sa.Column("height", sa.Integer(), nullable=False),
        sa.Column("author", sa.String(100), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_flags"),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], name="fk_flags_image_id_images"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name="fk_flags_model_id_models"),
        sa.UniqueConstraint("uid", name="uq_flags_uid"),
        sa.CheckConstraint(
            _in("kind", ("false_positive", "false_negative", "ignore")), name="kind"
        ),
    )
    op.create_table(
        "eval_results",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("method", sa.String(200), nullable=False),
        sa.Column("params_json", sa.Text()),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("metrics_json", sa.Text(), nullable=False),
        sa.Column("n_images", sa.Integer(), nullable=False),
        sa.Column("per_image_json", sa.Text()),
        sa.Column("code_version", sa.String(64), nullable=False),
        sa.Column("seconds", sa.Float()),
        _ts("created"),
        sa.PrimaryKeyConstraint("id", name="pk_eval_results"),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name="fk_eval_results_model_id_models"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_eval_results_dataset_id_datasets"
        ),
    )
    op.create_index(
        "ix_eval_results_model_id_method_dataset_id",
        "eval_results",
        ["model_id", "method", "dataset_id"],
    )


def downgrade() -> None:
    for table in (
        "eval_results",
        "flags",
        "paste_revisions",
        "pastes",
        "synthetic_samples",
        "head_versions",
        "jobs",
        "models",
        "images",
        "datasets",
    ):
        op.drop_table(table)
