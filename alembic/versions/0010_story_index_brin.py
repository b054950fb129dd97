"""The story tables' ``started_at`` indexes as BRIN on PostgreSQL.

They serve only the index's pruning (rows older than its horizon), and rows arrive in about
event-time order: a block range summary finds the old rows, where a B-tree cost an index insert
for every band key of every story (16 a story). On SQLite the plain indexes stay.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-05
"""

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

TABLES = ("stories", "story_keys", "story_members")


def _rebuild(using: str) -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in TABLES:
        op.drop_index(f"ix_{table}_started_at", table_name=table)
        op.create_index(
            f"ix_{table}_started_at", table, ["started_at"], postgresql_using=using,
            postgresql_with={"autosummarize": "on"} if using == "brin" else {},
        )  # fmt: skip


def upgrade() -> None:
    _rebuild("brin")


def downgrade() -> None:
    _rebuild("btree")
