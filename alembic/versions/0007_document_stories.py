"""Documents carry their story (the first document of the near-duplicates they belong to) and their
novelty (1 for a story's first document, halved for each later copy).

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.add_column(sa.Column("story_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("novelty", sa.Float(), nullable=True))
    op.create_index("ix_documents_story_id", "documents", ["story_id"])


def downgrade() -> None:
    op.drop_index("ix_documents_story_id", table_name="documents")
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("novelty")
        batch.drop_column("story_id")
