"""Typed ORM models. Every table a stream writes has a natural key, so writes are idempotent upserts.

Results (scores, rolling sentiment, alerts) carry a ``run_id``: ``live`` for the stream, another id for
replay jobs, so a replay writes beside live rows and never over them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from storage.base import Base

ID = String(32)
GROUP = String(64)  # a group key: a ticker, ``sector:<name>`` or ``market``


def _by_event_time(table: str) -> Index:
    """``started_at`` of a story table, for pruning only: a BRIN index on PostgreSQL. Rows come in
    about event-time order, so a block range summary finds the old ones for a fraction of what a
    B-tree costs at every insert (16 band keys a story); on SQLite a plain index."""
    return Index(
        f"ix_{table}_started_at", "started_at",
        postgresql_using="brin", postgresql_with={"autosummarize": "on"},
    )  # fmt: skip


class DocumentRow(Base):
    __tablename__ = "documents"
    # event-time order with a tie-break: a replay pages through documents by (published_at, id)
    # straight off this index, without sorting what is left of the period for every page
    __table_args__ = (
        Index("ix_documents_published_at_id", "published_at", "id"),
        Index("ix_documents_story_id", "story_id"),
    )

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    source: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    title: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    url: Mapped[str | None] = mapped_column(Text)
    lang: Mapped[str] = mapped_column(String(8))
    published_at: Mapped[datetime]
    fetched_at: Mapped[datetime]
    story_id: Mapped[str | None] = mapped_column(ID)  # the story's first document
    novelty: Mapped[float | None] = mapped_column(Float)


class DocumentTickerRow(Base):
    __tablename__ = "document_tickers"
    __table_args__ = (Index("ix_document_tickers_ticker_published_at", "ticker", "published_at"),)

    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), primary_key=True)
    ticker: Mapped[str] = mapped_column(String(24), primary_key=True)
    relevance: Mapped[float] = mapped_column(Float)
    published_at: Mapped[datetime]


class VoteRow(Base):
    __tablename__ = "votes"

    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), primary_key=True)
    member: Mapped[str] = mapped_column(String(100), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(100), primary_key=True)
    label: Mapped[str] = mapped_column(String(16))
    p_negative: Mapped[float] = mapped_column(Float)
    p_neutral: Mapped[float] = mapped_column(Float)
    p_positive: Mapped[float] = mapped_column(Float)


class ScoreRow(Base):
    __tablename__ = "scores"
    __table_args__ = (  # a replay looks scores up by document and model version (its cache)
        Index("ix_scores_document_id_model_version", "document_id", "model_version"),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), primary_key=True)
    model_version: Mapped[str] = mapped_column(String(100), primary_key=True)
    published_at: Mapped[datetime] = mapped_column(index=True)
    label: Mapped[str] = mapped_column(String(16))
    p_negative: Mapped[float] = mapped_column(Float)
    p_neutral: Mapped[float] = mapped_column(Float)
    p_positive: Mapped[float] = mapped_column(Float)
    score: Mapped[float] = mapped_column(Float)
    confidence: Mapped[float] = mapped_column(Float)
    disagreement: Mapped[float] = mapped_column(Float)


class _SentimentColumns:
    """Per-group rolling sentiment in event time, one row per (document, group) as it was taken.

    These rows are also the risk engine's durable state: a worker that takes a group over (after a
    restart or a rebalance) rebuilds the group's windows from them (``late`` ones were not counted).
    """

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticker: Mapped[str] = mapped_column(GROUP, primary_key=True)
    document_id: Mapped[str] = mapped_column(ID, primary_key=True)
    published_at: Mapped[datetime]
    score: Mapped[float] = mapped_column(Float)
    label: Mapped[str | None] = mapped_column(String(16))
    disagreement: Mapped[float | None] = mapped_column(Float)
    story_id: Mapped[str | None] = mapped_column(ID)
    late: Mapped[bool] = mapped_column(Boolean, default=False)
    stored_at: Mapped[datetime | None]  # when the live stream stored it: publish-to-risk lag
    window_documents: Mapped[int] = mapped_column(Integer)
    window_mean_score: Mapped[float] = mapped_column(Float)
    window_negative_share: Mapped[float] = mapped_column(Float)


class TickerSentimentRow(_SentimentColumns, Base):
    __tablename__ = "ticker_sentiment"
    __table_args__ = (
        Index("ix_ticker_sentiment_ticker_published_at", "run_id", "ticker", "published_at"),
    )


class GroupSentimentRow(_SentimentColumns, Base):
    """The same rows for sector and market groups (``sector:<name>``, ``market``)."""

    __tablename__ = "group_sentiment"
    __table_args__ = (
        Index("ix_group_sentiment_ticker_published_at", "run_id", "ticker", "published_at"),
    )


class AlertRow(Base):
    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_ticker_window_end", "run_id", "ticker", "window_end"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64))
    rule: Mapped[str] = mapped_column(String(100))
    ticker: Mapped[str] = mapped_column(GROUP)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    family: Mapped[str | None] = mapped_column(String(64))
    window_start: Mapped[datetime]
    window_end: Mapped[datetime]
    fired_at: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    measured: Mapped[dict[str, Any]]
    thresholds: Mapped[dict[str, Any]]
    evidence: Mapped[list[str]]
    explanation: Mapped[str] = mapped_column(Text)


class DeadLetterRow(Base):
    __tablename__ = "dead_letters"

    id: Mapped[str] = mapped_column(ID, primary_key=True)
    stage: Mapped[str] = mapped_column(String(32), index=True)
    reason: Mapped[str] = mapped_column(Text)
    topic: Mapped[str | None] = mapped_column(String(249))
    key: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[str] = mapped_column(Text)
    occurred_at: Mapped[datetime]  # first seen
    # seen again (redelivered, or failing again after a redrive): the latest time and its reason
    last_seen_at: Mapped[datetime] = mapped_column(index=True)
    payload_exact: Mapped[bool] = mapped_column(default=True)  # the original bytes, whole
    redriven_at: Mapped[datetime | None]  # sent back to its topic (``riskwire deadletters``)
    redrives: Mapped[int] = mapped_column(Integer, default=0)


class DocumentLabelRow(Base):
    """An analyst's judgement of a document's sentiment: one row per document and labeller (a
    relabel replaces it). Labelled documents are evaluation and training data from the feeds
    themselves (``riskwire labels``), so retention keeps them."""

    __tablename__ = "document_labels"
    __table_args__ = (Index("ix_document_labels_labelled_at", "labelled_at", "document_id"),)

    document_id: Mapped[str] = mapped_column(ForeignKey("documents.id"), primary_key=True)
    labeller: Mapped[str] = mapped_column(String(200), primary_key=True)
    label: Mapped[str] = mapped_column(String(16))
    note: Mapped[str | None] = mapped_column(Text)
    labelled_at: Mapped[datetime]


class ModelVersionRow(Base):
    """The model registry: every member and ensemble version that has scored, and what it is."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(100), primary_key=True)
    name: Mapped[str] = mapped_column(String(100), index=True)
    kind: Mapped[str] = mapped_column(String(32))
    description: Mapped[dict[str, Any]]
    registered_at: Mapped[datetime]


class ReplayRunRow(Base):
    """A replay or backfill job: what it runs, how far it got, its checkpoint and its report.

    ``id`` names the job; ``run_id`` is the run its results are written under (the job id for a
    replay, ``live`` for a backfill). The comparison columns let a Grafana dashboard list replays
    against their baseline without reading the JSON report.
    """

    __tablename__ = "replay_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    run_id: Mapped[str] = mapped_column(String(64), index=True)
    kind: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), index=True)
    source: Mapped[str] = mapped_column(Text)
    period_start: Mapped[datetime | None]
    period_end: Mapped[datetime | None]
    tickers: Mapped[list[str]]
    model_version: Mapped[str | None] = mapped_column(String(100))
    rules: Mapped[dict[str, Any]]
    baseline_run: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    total: Mapped[int] = mapped_column(Integer, default=0)
    processed: Mapped[int] = mapped_column(Integer, default=0)
    rescored: Mapped[int] = mapped_column(Integer, default=0)
    cached: Mapped[int] = mapped_column(Integer, default=0)
    rejected: Mapped[int] = mapped_column(Integer, default=0)
    alerts: Mapped[int] = mapped_column(Integer, default=0)
    checkpoint: Mapped[dict[str, Any] | None]
    error: Mapped[str | None] = mapped_column(Text)
    report: Mapped[dict[str, Any] | None]
    baseline_alerts: Mapped[int | None] = mapped_column(Integer)
    alerts_matched: Mapped[int | None] = mapped_column(Integer)
    alerts_shifted: Mapped[int | None] = mapped_column(Integer)
    alerts_gained: Mapped[int | None] = mapped_column(Integer)
    alerts_lost: Mapped[int | None] = mapped_column(Integer)
    documents_compared: Mapped[int | None] = mapped_column(Integer)
    label_agreement: Mapped[float | None] = mapped_column(Float)
    label_flips: Mapped[int | None] = mapped_column(Integer)


class ApiKeyRow(Base):
    """An API key: its public id, the SHA-256 of its secret (never the secret), and its scopes."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    secret_hash: Mapped[str] = mapped_column(String(64))
    scopes: Mapped[list[str]]
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


class SubscriptionRow(Base):
    """What one API key wants to hear about (filters) and how (a webhook URL, or server-sent
    events it reads itself). A webhook's signing secret is kept to sign with."""

    __tablename__ = "subscriptions"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    api_key_id: Mapped[str] = mapped_column(ForeignKey("api_keys.id"), index=True)
    name: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str] = mapped_column(String(16))
    url: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str | None] = mapped_column(String(128))
    tickers: Mapped[list[str]]
    sectors: Mapped[list[str]]
    rules: Mapped[list[str]]
    min_severity: Mapped[str] = mapped_column(String(16))
    active: Mapped[bool]
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class AlertEventRow(Base):
    """Every live alert firing and resolving, in the order stored: the feed that server-sent events
    stream (``seq`` is the event id a client resumes from) and that deliveries are made from."""

    __tablename__ = "alert_events"

    seq: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(ID, unique=True)  # alert id + state: stored once
    alert_id: Mapped[str] = mapped_column(ID, index=True)
    rule: Mapped[str] = mapped_column(String(100))
    ticker: Mapped[str] = mapped_column(GROUP)
    severity: Mapped[str] = mapped_column(String(16))
    state: Mapped[str] = mapped_column(String(16))
    event_time: Mapped[datetime]
    suppressed: Mapped[str | None] = mapped_column(Text)  # why nobody was notified, if so
    created_at: Mapped[datetime]
    alert: Mapped[dict[str, Any]]


class DeliveryRow(Base):
    """The outbox: one row per event and destination (a webhook subscription, Grafana,
    Alertmanager), written in the transaction that stores the alert, then sent with retries."""

    __tablename__ = "deliveries"
    __table_args__ = (Index("ix_deliveries_status_next_attempt_at", "status", "next_attempt_at"),)

    id: Mapped[str] = mapped_column(ID, primary_key=True)  # event + target + subscription
    event_id: Mapped[str] = mapped_column(ForeignKey("alert_events.id"), index=True)
    target: Mapped[str] = mapped_column(String(16))
    subscription_id: Mapped[str | None] = mapped_column(String(32), index=True)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer)
    next_attempt_at: Mapped[datetime]
    last_error: Mapped[str | None] = mapped_column(Text)
    response: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime]
    delivered_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class FeedHealthRow(Base):
    """How each polled feed is doing: a dead or failing feed must never look like a quiet market."""

    __tablename__ = "feed_health"

    source: Mapped[str] = mapped_column(String(200), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16))
    url: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))  # ok | quiet | silent | failing
    expected_interval_s: Mapped[float] = mapped_column(Float)
    silent_after_s: Mapped[float] = mapped_column(Float)
    last_poll_at: Mapped[datetime | None]
    last_success_at: Mapped[datetime | None]
    last_item_at: Mapped[datetime | None]
    consecutive_errors: Mapped[int] = mapped_column(Integer)
    last_error: Mapped[str | None] = mapped_column(Text)
    items_total: Mapped[int] = mapped_column(Integer)
    items_last_poll: Mapped[int] = mapped_column(Integer)
    items_per_minute: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[datetime]


class RiskAggregateRow(Base):
    """Tumbling-window aggregates per group (ticker, sector, market) and window length, in event
    time, with z-scores against the group's own baseline. Upserted as documents come in."""

    __tablename__ = "risk_aggregates"
    __table_args__ = (
        Index("ix_risk_aggregates_ticker_window_start", "run_id", "ticker", "window_start"),
    )

    run_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    ticker: Mapped[str] = mapped_column(GROUP, primary_key=True)
    window_minutes: Mapped[int] = mapped_column(Integer, primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    group_kind: Mapped[str] = mapped_column(String(16))
    window_end: Mapped[datetime]
    documents: Mapped[int] = mapped_column(Integer)
    mean_score: Mapped[float] = mapped_column(Float)
    negative_share: Mapped[float] = mapped_column(Float)
    dispersion: Mapped[float] = mapped_column(Float)
    disagreement: Mapped[float] = mapped_column(Float)
    sentiment_z: Mapped[float | None] = mapped_column(Float)
    volume_z: Mapped[float | None] = mapped_column(Float)


class SilenceRow(Base):
    """Mutes notifications of matching alerts until it expires; the alerts are still stored.

    Empty matchers match everything: a silence with no ticker, rule or family mutes all alerts."""

    __tablename__ = "silences"

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    ticker: Mapped[str | None] = mapped_column(GROUP)
    rule: Mapped[str | None] = mapped_column(String(100))
    family: Mapped[str | None] = mapped_column(String(64))
    created_by: Mapped[str] = mapped_column(String(200))
    comment: Mapped[str] = mapped_column(Text)
    starts_at: Mapped[datetime]
    expires_at: Mapped[datetime] = mapped_column(index=True)
    created_at: Mapped[datetime]


class RuleSetRow(Base):
    """A rules file loaded into the database (``riskwire rules load``): the newest one is what
    workers run when no rules file is configured."""

    __tablename__ = "rule_sets"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    digest: Mapped[str] = mapped_column(String(16))
    rules: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(Text)
    loaded_at: Mapped[datetime]


class StoryRow(Base):
    """The story index that every normalise worker shares (``storage.stories``): one row per story,
    with what a near-duplicate is matched against. Kept for the index's horizon of event time."""

    __tablename__ = "stories"
    __table_args__ = (_by_event_time("stories"),)

    story_id: Mapped[str] = mapped_column(ID, primary_key=True)  # its first document
    started_at: Mapped[datetime]
    tickers: Mapped[str] = mapped_column(Text)  # space-separated, sorted
    numbers: Mapped[str] = mapped_column(Text)  # space-separated, sorted
    signature: Mapped[str] = mapped_column(Text)  # the MinHash signature, hex
    copies: Mapped[int] = mapped_column(Integer)


class StoryKeyRow(Base):
    """A story's LSH band keys: a document's keys find the stories it may copy."""

    __tablename__ = "story_keys"
    __table_args__ = (_by_event_time("story_keys"),)

    key: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # ``stories.key_id``
    story_id: Mapped[str] = mapped_column(ID, primary_key=True)
    started_at: Mapped[datetime]


class StoryMemberRow(Base):
    """Which story a copy was put in, so a redelivered copy gets the same answer (a story's first
    document has its story row)."""

    __tablename__ = "story_members"
    __table_args__ = (_by_event_time("story_members"),)

    document_id: Mapped[str] = mapped_column(ID, primary_key=True)
    story_id: Mapped[str] = mapped_column(ID)
    copy: Mapped[int] = mapped_column(Integer)  # 0 for the story's first document
    similarity: Mapped[float] = mapped_column(Float)
    started_at: Mapped[datetime]  # the story's


class StreamFenceRow(Base):
    """Per stream topic and partition, an epoch that goes up each time a worker acquires the
    partition; the worker's writes of its results check it is still theirs, so a worker that lost
    the partition without noticing (paused past its session) is refused instead of writing over
    its new owner's rows (``storage.fences``)."""

    __tablename__ = "stream_fences"

    topic: Mapped[str] = mapped_column(String(249), primary_key=True)
    partition: Mapped[int] = mapped_column(Integer, primary_key=True)
    epoch: Mapped[int] = mapped_column(BigInteger)
    generation: Mapped[int | None] = mapped_column(Integer)  # the consumer group's, for people
    owner: Mapped[str] = mapped_column(String(200))  # host:pid
    claimed_at: Mapped[datetime]
