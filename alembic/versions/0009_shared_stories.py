"""The story index in the database: stories, their band keys, and each document's story.

Shared by every normalise worker, and kept across restarts.

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

TIME = UtcDateTime()


def upgrade() -> None:
    op.create_table(
        "stories",
        sa.Column("story_id", sa.String(32), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.Column("tickers", sa.Text(), nullable=False),
        sa.Column("numbers", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.Column("copies", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("story_id", name="pk_stories"),
    )
    op.create_index("ix_stories_started_at", "stories", ["started_at"])
    op.create_table(
        "story_keys",
        sa.Column("key", sa.BigInteger(), nullable=False),
        sa.Column("story_id", sa.String(32), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("key", "story_id", name="pk_story_keys"),
    )
    op.create_index("ix_story_keys_started_at", "story_keys", ["started_at"])
    op.create_table(
        "story_members",
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("story_id", sa.String(32), nullable=False),
        sa.Column("copy", sa.Integer(), nullable=False),
        sa.Column("similarity", sa.Float(), nullable=False),
        sa.Column("started_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("document_id", name="pk_story_members"),
    )
    op.create_index("ix_story_members_started_at", "story_members", ["started_at"])


def downgrade() -> None:
    for table in ("story_members", "story_keys", "stories"):
        op.drop_index(f"ix_{table}_started_at", table_name=table)
        op.drop_table(table)
