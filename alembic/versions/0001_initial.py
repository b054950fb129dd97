"""Initial schema: documents, tickers, votes, scores, rolling ticker sentiment, alerts, dead letters.

Revision ID: 0001
Revises:
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def _probabilities() -> list[sa.Column]:
    return [
        sa.Column("p_negative", sa.Float(), nullable=False),
        sa.Column("p_neutral", sa.Float(), nullable=False),
        sa.Column("p_positive", sa.Float(), nullable=False),
    ]


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("source", sa.String(200), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("title", sa.Text(), nullable=True),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=True),
        sa.Column("lang", sa.String(8), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.Column("fetched_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
    )
    op.create_index("ix_documents_published_at", "documents", ["published_at"])

    op.create_table(
        "document_tickers",
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("ticker", sa.String(24), nullable=False),
        sa.Column("relevance", sa.Float(), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"],
                                name="fk_document_tickers_document_id_documents"),
        sa.PrimaryKeyConstraint("document_id", "ticker", name="pk_document_tickers"),
    )
    op.create_index("ix_document_tickers_ticker_published_at", "document_tickers",
                    ["ticker", "published_at"])

    op.create_table(
        "votes",
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("member", sa.String(100), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        *_probabilities(),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"],
                                name="fk_votes_document_id_documents"),
        sa.PrimaryKeyConstraint("document_id", "member", "model_version", name="pk_votes"),
    )

    op.create_table(
        "scores",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.Column("label", sa.String(16), nullable=False),
        *_probabilities(),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("disagreement", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"],
                                name="fk_scores_document_id_documents"),
        sa.PrimaryKeyConstraint("run_id", "document_id", "model_version", name="pk_scores"),
    )
    op.create_index("ix_scores_published_at", "scores", ["published_at"])

    op.create_table(
        "ticker_sentiment",
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("ticker", sa.String(24), nullable=False),
        sa.Column("document_id", sa.String(32), nullable=False),
        sa.Column("published_at", UtcDateTime(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("window_documents", sa.Integer(), nullable=False),
        sa.Column("window_mean_score", sa.Float(), nullable=False),
        sa.Column("window_negative_share", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("run_id", "ticker", "document_id", name="pk_ticker_sentiment"),
    )
    op.create_index("ix_ticker_sentiment_ticker_published_at", "ticker_sentiment",
                    ["run_id", "ticker", "published_at"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("rule", sa.String(100), nullable=False),
        sa.Column("ticker", sa.String(24), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("window_start", UtcDateTime(), nullable=False),
        sa.Column("window_end", UtcDateTime(), nullable=False),
        sa.Column("fired_at", UtcDateTime(), nullable=False),
        sa.Column("resolved_at", UtcDateTime(), nullable=True),
        sa.Column("measured", sa.JSON(), nullable=False),
        sa.Column("thresholds", sa.JSON(), nullable=False),
        sa.Column("evidence", sa.JSON(), nullable=False),
        sa.Column("explanation", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_alerts"),
    )
    op.create_index("ix_alerts_ticker_window_end", "alerts", ["run_id", "ticker", "window_end"])

    op.create_table(
        "dead_letters",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("stage", sa.String(32), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("topic", sa.String(249), nullable=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("payload", sa.Text(), nullable=False),
        sa.Column("occurred_at", UtcDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dead_letters"),
    )
    op.create_index("ix_dead_letters_stage", "dead_letters", ["stage"])


def downgrade() -> None:
    for table in ("dead_letters", "alerts", "ticker_sentiment", "scores", "votes",
                  "document_tickers", "documents"):
        op.drop_table(table)
