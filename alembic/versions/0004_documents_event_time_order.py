"""Documents indexed by (published_at, id), the order replays read them in; it replaces the index on
published_at alone, which it covers.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_documents_published_at_id", "documents", ["published_at", "id"])
    op.drop_index("ix_documents_published_at", table_name="documents")


def downgrade() -> None:
    op.create_index("ix_documents_published_at", "documents", ["published_at"])
    op.drop_index("ix_documents_published_at_id", table_name="documents")
