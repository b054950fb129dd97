"""Risk monitoring: aggregates per group and window, the rolling rows as the engine's durable state,
group keys for sectors and the market, rule families, silences and rule sets.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

TIME = UtcDateTime()


def upgrade() -> None:
    with op.batch_alter_table("ticker_sentiment") as batch:
        batch.alter_column("ticker", type_=sa.String(64), existing_type=sa.String(24))
        batch.add_column(sa.Column("label", sa.String(16), nullable=True))
        batch.add_column(sa.Column("disagreement", sa.Float(), nullable=True))
        batch.add_column(sa.Column("story_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("late", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch.add_column(sa.Column("stored_at", TIME, nullable=True))
    with op.batch_alter_table("alerts") as batch:
        batch.alter_column("ticker", type_=sa.String(64), existing_type=sa.String(24))
        batch.add_column(sa.Column("family", sa.String(64), nullable=True))
    with op.batch_alter_table("alert_events") as batch:
        batch.alter_column("ticker", type_=sa.String(64), existing_type=sa.String(24))
        batch.add_column(sa.Column("suppressed", sa.Text(), nullable=True))
    op.create_table(
        "group_sentiment",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("published_at", TIME, nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("label", sa.String(16), nullable=True),
        sa.Column("disagreement", sa.Float(), nullable=True),
        sa.Column("story_id", sa.String(32), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.Column("stored_at", TIME, nullable=True),
        sa.Column("window_documents", sa.Integer(), nullable=False),
        sa.Column("window_mean_score", sa.Float(), nullable=False),
        sa.Column("window_negative_share", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "ticker", "document_id", name="pk_group_sentiment"),
    )
    op.create_index(
        "ix_group_sentiment_ticker_published_at",
        "group_sentiment",
        ["run_id", "ticker", "published_at"],
    )
    op.create_table(
        "risk_aggregates",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("ticker", sa.String(64), nullable=False),
        sa.Column("window_minutes", sa.Integer(), nullable=False),
        sa.Column("window_start", TIME, nullable=False),
        sa.Column("group_kind", sa.String(16), nullable=False),
        sa.Column("window_end", TIME, nullable=False),
        sa.Column("documents", sa.Integer(), nullable=False),
        sa.Column("mean_score", sa.Float(), nullable=False),
        sa.Column("negative_share", sa.Float(), nullable=False),
        sa.Column("dispersion", sa.Float(), nullable=False),
        sa.Column("disagreement", sa.Float(), nullable=False),
        sa.Column("sentiment_z", sa.Float(), nullable=True),
        sa.Column("volume_z", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint(
            "run_id", "ticker", "window_minutes", "window_start", name="pk_risk_aggregates"
        ),
    )
    op.create_index(
        "ix_risk_aggregates_ticker_window_start",
        "risk_aggregates",
        ["run_id", "ticker", "window_start"],
    )
    op.create_table(
        "silences",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("ticker", sa.String(64), nullable=True),
        sa.Column("rule", sa.String(100), nullable=True),
        sa.Column("family", sa.String(64), nullable=True),
        sa.Column("created_by", sa.String(200), nullable=False),
        sa.Column("comment", sa.Text(), nullable=False),
        sa.Column("starts_at", TIME, nullable=False),
        sa.Column("expires_at", TIME, nullable=False),
        sa.Column("created_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_silences"),
    )
    op.create_index("ix_silences_expires_at", "silences", ["expires_at"])
    op.create_table(
        "rule_sets",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("digest", sa.String(16), nullable=False),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("loaded_at", TIME, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_rule_sets"),
    )


def downgrade() -> None:
    op.drop_table("rule_sets")
    op.drop_index("ix_silences_expires_at", table_name="silences")
    op.drop_table("silences")
    op.drop_index("ix_risk_aggregates_ticker_window_start", table_name="risk_aggregates")
    op.drop_table("risk_aggregates")
    op.drop_index("ix_group_sentiment_ticker_published_at", table_name="group_sentiment")
    op.drop_table("group_sentiment")
    with op.batch_alter_table("alert_events") as batch:
        batch.drop_column("suppressed")
        batch.alter_column("ticker", type_=sa.String(24), existing_type=sa.String(64))
    with op.batch_alter_table("alerts") as batch:
        batch.drop_column("family")
        batch.alter_column("ticker", type_=sa.String(24), existing_type=sa.String(64))
    with op.batch_alter_table("ticker_sentiment") as batch:
        for column in ("stored_at", "late", "story_id", "disagreement", "label"):
            batch.drop_column(column)
        batch.alter_column("ticker", type_=sa.String(24), existing_type=sa.String(64))
