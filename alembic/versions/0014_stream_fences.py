"""``stream_fences``: per stream topic and partition, an epoch that goes up each time a worker
acquires the partition, so a worker that lost it without noticing (a zombie) cannot write over
its new owner's rows (``storage.fences``).

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "stream_fences",
        sa.Column("topic", sa.String(249), nullable=False),
        sa.Column("partition", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=True),
        sa.Column("owner", sa.String(200), nullable=False),
        sa.Column("claimed_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("topic", "partition", name="pk_stream_fences"),
    )


def downgrade() -> None:
    op.drop_table("stream_fences")
