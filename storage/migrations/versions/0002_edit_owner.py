"""edits.owner: the visitor branch an unpublished edit belongs to (NULL = published, shared)

Revision ID: 0002
Revises: 0001
"""
import sqlalchemy as sa
from alembic import op

from storage.db import crash_point

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))
    crash_point("migration_0002")  # test hook: a kill after ADD COLUMN, before the stamp
    with op.batch_alter_table("edits") as batch:
        batch.create_index("ix_edits_owner", ["owner"])


def downgrade() -> None:
    with op.batch_alter_table("edits") as batch:
        batch.drop_index("ix_edits_owner")
        batch.drop_column("owner")
