"""Dead letters can be sent back (``riskwire deadletters redrive``): when each was last seen (a
letter failing again after a redrive is the same row, seen later, with the newer reason), whether
its payload is the original bytes, and when and how often it was redriven.

Rows stored before this revision: last seen when first seen; a payload ending in the truncation
note is not exact (one whose invalid UTF-8 was escaped cannot be told apart, and is taken as exact).

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.add_column(sa.Column("last_seen_at", UtcDateTime(), nullable=True))
        batch.add_column(
            sa.Column("payload_exact", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch.add_column(sa.Column("redriven_at", UtcDateTime(), nullable=True))
        batch.add_column(sa.Column("redrives", sa.Integer(), nullable=False, server_default="0"))
    op.execute("UPDATE dead_letters SET last_seen_at = occurred_at")
    op.execute(
        "UPDATE dead_letters SET payload_exact = false "
        "WHERE payload LIKE '%... [truncated: % characters in all]'"
    )
    with op.batch_alter_table("dead_letters") as batch:
        batch.alter_column("last_seen_at", existing_type=UtcDateTime(), nullable=False)
        batch.create_index("ix_dead_letters_last_seen_at", ["last_seen_at"])


def downgrade() -> None:
    with op.batch_alter_table("dead_letters") as batch:
        batch.drop_index("ix_dead_letters_last_seen_at")
        batch.drop_column("redrives")
        batch.drop_column("redriven_at")
        batch.drop_column("payload_exact")
        batch.drop_column("last_seen_at")
