"""Replay and backfill jobs (parameters, progress, checkpoint, report, comparison summary), and
the index a replay uses to find cached scores.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

import sqlalchemy as sa
from alembic import op

from storage.base import UtcDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "replay_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("period_start", UtcDateTime(), nullable=True),
        sa.Column("period_end", UtcDateTime(), nullable=True),
        sa.Column("tickers", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(100), nullable=True),
        sa.Column("rules", sa.JSON(), nullable=False),
        sa.Column("baseline_run", sa.String(64), nullable=True),
        sa.Column("created_at", UtcDateTime(), nullable=False),
        sa.Column("started_at", UtcDateTime(), nullable=True),
        sa.Column("finished_at", UtcDateTime(), nullable=True),
        sa.Column("updated_at", UtcDateTime(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("processed", sa.Integer(), nullable=False),
        sa.Column("rescored", sa.Integer(), nullable=False),
        sa.Column("cached", sa.Integer(), nullable=False),
        sa.Column("rejected", sa.Integer(), nullable=False),
        sa.Column("alerts", sa.Integer(), nullable=False),
        sa.Column("checkpoint", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("report", sa.JSON(), nullable=True),
        sa.Column("baseline_alerts", sa.Integer(), nullable=True),
        sa.Column("alerts_matched", sa.Integer(), nullable=True),
        sa.Column("alerts_shifted", sa.Integer(), nullable=True),
        sa.Column("alerts_gained", sa.Integer(), nullable=True),
        sa.Column("alerts_lost", sa.Integer(), nullable=True),
        sa.Column("documents_compared", sa.Integer(), nullable=True),
        sa.Column("label_agreement", sa.Float(), nullable=True),
        sa.Column("label_flips", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_replay_runs"),
    )
    op.create_index("ix_replay_runs_run_id", "replay_runs", ["run_id"])
    op.create_index("ix_replay_runs_status", "replay_runs", ["status"])
    # a replay finds cached scores by document and model version
    op.create_index(
        "ix_scores_document_id_model_version", "scores", ["document_id", "model_version"]
    )


def downgrade() -> None:
    op.drop_index("ix_scores_document_id_model_version", table_name="scores")
    op.drop_table("replay_runs")
