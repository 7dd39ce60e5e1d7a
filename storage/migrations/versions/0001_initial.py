"""initial schema: base_models, edits, events

Revision ID: 0001
Revises:
"""
import sqlalchemy as sa
from alembic import op

from storage.db import crash_point

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "base_models",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(1024), nullable=False),
        sa.Column("revision", sa.String(255), nullable=True),
        sa.Column("file_sha256", sa.String(64), nullable=False),
        sa.Column("dtype", sa.String(32), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_base_models_identity", "base_models", ["name", "file_sha256", "dtype"],
                    unique=True)
    crash_point("migration_0001")  # test hook: a kill between two CREATE TABLEs
    op.create_table(
        "edits",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("base_model_id", sa.Integer(), sa.ForeignKey("base_models.id"), nullable=False),
        sa.Column("requests", sa.JSON(), nullable=False),
        sa.Column("hparams", sa.JSON(), nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("objective", sa.String(32), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("metrics", sa.JSON(), nullable=False),
        sa.Column("losses", sa.JSON(), nullable=False),
        sa.Column("steps", sa.Integer(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.Column("blob_sha256", sa.String(64), nullable=False),
        sa.Column("tensor_names", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index("ix_edits_base_model_id", "edits", ["base_model_id"])
    op.create_index("ix_edits_blob_sha256", "edits", ["blob_sha256"])
    op.create_table(
        "events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("edit_id", sa.Integer(), sa.ForeignKey("edits.id"), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
    )
    op.create_index("ix_events_edit_id", "events", ["edit_id"])


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("edits")
    op.drop_table("base_models")
