"""``document_labels``: analysts' judgements of documents' sentiment (``riskwire labels``,
``POST /documents/{id}/labels``), one per document and labeller.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "document_labels",
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("labeller", sa.String(200), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        sa.Column("note", sa.Text(), nullable=True),
        sa.Column("labelled_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"],
                                name="fk_document_labels_document_id_documents"),
        sa.PrimaryKeyConstraint("document_id", "labeller", name="pk_document_labels"),
    )
    op.create_index(
        "ix_document_labels_labelled_at", "document_labels", ["labelled_at", "document_id"]
    )


def downgrade() -> None:
    op.drop_index("ix_document_labels_labelled_at", table_name="document_labels")
    op.drop_table("document_labels")
