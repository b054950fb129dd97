"""Retention (``storage.retention`` and ``riskwire db prune``), on SQLite and PostgreSQL: what is
older than the cutoff goes, with everything that hangs off it; what is newer, firing, or still to
be delivered stays; a dry run counts exactly what a run deletes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import DeadLetter
from storage import labels, repository
from storage.delivery import Targets, record_alert_events
from storage.retention import prune
from storage.tables import (
    AlertEventRow,
    AlertRow,
    DeadLetterRow,
    DeliveryRow,
    DocumentRow,
    DocumentTickerRow,
    GroupSentimentRow,
    RiskAggregateRow,
    ScoreRow,
    TickerSentimentRow,
    VoteRow,
)
from streams.pipeline import NegativeSurgeRule, RiskEngine
from tests.factories import make_alert, make_document, make_score
from tests.riskwire.test_cli import riskwire

CUTOFF = datetime(2026, 11, 1, tzinfo=UTC)
# documents' event times: two before the cutoff (one with a gap of months before it), three after
TIMES = [
    CUTOFF - timedelta(days=200),
    CUTOFF - timedelta(days=2, hours=3),
    CUTOFF + timedelta(hours=1),
    CUTOFF + timedelta(days=3),
    CUTOFF + timedelta(days=9),
]
TABLES = {
    "documents": DocumentRow, "document_tickers": DocumentTickerRow, "votes": VoteRow,
    "scores": ScoreRow, "ticker_sentiment": TickerSentimentRow,
    "group_sentiment": GroupSentimentRow, "risk_aggregates": RiskAggregateRow,
    "dead_letters": DeadLetterRow, "alerts": AlertRow, "alert_events": AlertEventRow,
    "deliveries": DeliveryRow,
}  # fmt: skip


def fill(sessions: sessionmaker[Session]) -> None:
    """Documents with their scores (a live run and a replay's), rolling rows and aggregates from
    the risk engine, dead letters, and alerts with their events and deliveries."""
    docs = [make_document(published_at=t, fetched_at=t + timedelta(seconds=5)) for t in TIMES]
    engine = RiskEngine([NegativeSurgeRule(min_documents=99)], lateness=timedelta(0))
    rows = []
    with sessions.begin() as session:
        repository.upsert_documents(session, docs)
        for run in ("live", "replay-1"):
            scores = [make_score(d.id, published_at=d.published_at, run_id=run) for d in docs]
            repository.upsert_scores(session, scores)
        for s in scores:
            for group in ("ACME", "market"):
                update = engine.process(s, group)
                assert update.row is not None
                rows.append(update.row)
        repository.upsert_ticker_sentiment(session, rows)
        repository.upsert_aggregates(session, engine.drain_aggregates())
        repository.insert_dead_letters(session, [
            DeadLetter.of("normalise", "bad", f"{n}".encode(), occurred_at=t)
            for n, t in enumerate(TIMES)
        ])  # fmt: skip
        old, new = CUTOFF - timedelta(days=5), CUTOFF + timedelta(days=1)
        alerts = [
            make_alert("resolved", window_start=old, window_end=old + timedelta(hours=2)),
            make_alert("firing", window_start=old, window_end=old + timedelta(hours=2)),
            make_alert("resolved", window_start=new, window_end=new + timedelta(hours=2)),
        ]
        repository.upsert_alerts(session, alerts)
        for alert, created in zip(alerts, (old, old, new), strict=True):
            record_alert_events(session, [alert], Targets(grafana=True), created)
        # the first old event was delivered, the second's delivery is still pending
        first = session.scalars(select(DeliveryRow).order_by(DeliveryRow.created_at)).first()
        assert first is not None
        first.status = "delivered"


def counts(sessions: sessionmaker[Session]) -> dict[str, int]:
    with sessions() as session:
        return {
            name: session.scalar(select(func.count()).select_from(table)) or 0
            for name, table in TABLES.items()
        }


def test_prune_deletes_what_is_older_than_the_cutoff_and_everything_hanging_off_it(
    sessions: sessionmaker[Session],
) -> None:
    fill(sessions)
    before = counts(sessions)
    assert before["documents"] == 5 and before["scores"] == 10 and before["alert_events"] == 3
    dry = prune(sessions, CUTOFF, CUTOFF, dry_run=True)
    assert counts(sessions) == before  # a dry run deletes nothing
    report = prune(sessions, CUTOFF, CUTOFF)
    assert report.rows == dry.rows  # and counts exactly what a run deletes
    after = counts(sessions)
    assert {name: before[name] - after[name] for name in TABLES} == report.rows
    assert report.rows["documents"] == 2 and report.rows["scores"] == 4
    assert report.rows["votes"] == 2 and report.rows["document_tickers"] == 2
    assert report.rows["ticker_sentiment"] == 2 and report.rows["group_sentiment"] == 2
    assert report.rows["dead_letters"] == 2
    # the delivered old event goes with its delivery; the firing alert and the event whose
    # delivery is pending stay
    assert (report.rows["alerts"], report.rows["alert_events"], report.rows["deliveries"]) == (
        1, 1, 1
    )  # fmt: skip
    with sessions() as session:
        left = session.scalars(select(DocumentRow.published_at).order_by(DocumentRow.published_at))
        assert list(left) == TIMES[2:]
        assert set(session.scalars(select(AlertRow.state))) == {"firing", "resolved"}
        oldest_window = session.scalar(select(func.min(RiskAggregateRow.window_end)))
        assert oldest_window is not None and oldest_window >= CUTOFF
        oldest_row = session.scalar(select(func.min(TickerSentimentRow.published_at)))
        assert oldest_row == TIMES[2]
    again = prune(sessions, CUTOFF, CUTOFF)
    assert sum(again.rows.values()) == 0  # a second run has nothing left to do


def test_alerts_are_kept_unless_their_cutoff_is_given(sessions: sessionmaker[Session]) -> None:
    fill(sessions)
    before = counts(sessions)
    report = prune(sessions, CUTOFF)
    after = counts(sessions)
    for name in ("alerts", "alert_events", "deliveries"):
        assert after[name] == before[name] and name not in report.rows
    assert after["documents"] == 3


def test_db_prune_refuses_less_than_the_risk_engine_reaches_back(tmp_path: Path) -> None:
    env = {"RISKWIRE_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "250"}
    short = riskwire("db", "prune", "--keep", "7d", env=env)
    assert short.returncode == 2 and "less than the live risk engine reaches back" in short.stdout
    bad = riskwire("db", "prune", "--keep", "soon", env=env)
    assert bad.returncode == 2 and "not a duration" in bad.stdout
    dry = riskwire("db", "prune", "--keep", "60d", "--dry-run", "--json", env=env)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    report = json.loads(dry.stdout)
    assert report["dry_run"] and report["total"] == 0 and report["alerts_cutoff"] is None
    assert set(report["rows"]) >= {"documents", "votes", "ticker_sentiment", "dead_letters"}


def test_documents_an_analyst_labelled_are_kept_whole(sessions: sessionmaker[Session]) -> None:
    fill(sessions)
    with sessions() as session:
        oldest = session.scalars(select(DocumentRow.id).order_by(DocumentRow.published_at)).first()
    assert oldest is not None
    with sessions.begin() as session:
        labels.put(session, oldest, "ana", "negative", CUTOFF)
    dry = prune(sessions, CUTOFF, dry_run=True)
    report = prune(sessions, CUTOFF)
    assert report.rows["documents"] == dry.rows["documents"] == 1  # of the two before the cutoff
    assert report.kept == dry.kept == {"labelled_documents": 1}
    with sessions() as session:
        assert session.get(DocumentRow, oldest) is not None
        kept_scores = session.scalars(select(ScoreRow.run_id).where(ScoreRow.document_id == oldest))
        assert sorted(kept_scores) == ["live", "replay-1"]
        assert [r.label for r in labels.of_document(session, oldest)] == ["negative"]
    assert prune(sessions, CUTOFF).rows["documents"] == 0
