"""Retention: delete what is older than a cutoff, in event time, in small transactions.

Everything riskwire stores grows with the feeds (a document brings its tickers, a vote per member,
a score per run, a rolling-sentiment row per group), and nothing else removes it. ``prune``
deletes, before ``cutoff``:

- documents published before it, with their ticker links, votes and scores (every run's), one day
  of event time per transaction, children first; except documents an analyst labelled
  (``document_labels``), kept whole as evaluation and training data (``report.kept``);
- rolling-sentiment rows (``ticker_sentiment``, ``group_sentiment``) and aggregates whose window
  ended before it, group by group through the ``(run_id, ticker, …)`` indexes, a few hundred
  groups per transaction;
- dead letters last seen before it.

With ``alerts_cutoff`` (alerts are the record of what was warned, so they are kept unless asked):
resolved alerts whose window ended before it, delivered or dead deliveries of older alert events,
and those events once no delivery of theirs is left. A firing alert is never deleted, nor an event
with a delivery still pending.

The caller keeps the live risk engine's reach (``riskwire db prune`` refuses less): a worker that
takes a group over rebuilds its windows and baselines from the rolling rows of that long.
Replays can only read documents that are still stored. Safe to stop and run again: every step is
its own transaction and deletes by a predicate, so a second run deletes what the first left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, exists, func, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import AlertState
from storage.delivery import DEAD, DELIVERED, PENDING
from storage.tables import (
    AlertEventRow,
    AlertRow,
    DeadLetterRow,
    DeliveryRow,
    DocumentLabelRow,
    DocumentRow,
    DocumentTickerRow,
    GroupSentimentRow,
    RiskAggregateRow,
    ScoreRow,
    TickerSentimentRow,
    VoteRow,
)

DAY = timedelta(days=1)
GROUPS_PER_TRANSACTION = 200
Progress = Callable[[str, int], None]  # (table, rows deleted so far)


@dataclass
class PruneReport:
    cutoff: datetime
    alerts_cutoff: datetime | None
    dry_run: bool
    rows: dict[str, int] = field(default_factory=dict)  # per table: deleted (or, dry, to delete)
    kept: dict[str, int] = field(default_factory=dict)  # older than the cutoff and kept: why

    def add(self, table: str, n: int) -> None:
        self.rows[table] = self.rows.get(table, 0) + max(n, 0)

    def as_dict(self) -> dict[str, Any]:
        return {
            "cutoff": self.cutoff.isoformat(), "dry_run": self.dry_run, "rows": self.rows,
            "alerts_cutoff": self.alerts_cutoff.isoformat() if self.alerts_cutoff else None,
            "total": sum(self.rows.values()), "kept": self.kept,
        }  # fmt: skip


def prune(
    sessions: sessionmaker[Session],
    cutoff: datetime,
    alerts_cutoff: datetime | None = None,
    *,
    dry_run: bool = False,
    progress: Progress | None = None,
) -> PruneReport:
    report = PruneReport(cutoff, alerts_cutoff, dry_run)
    tell = progress or (lambda _table, _n: None)
    steps = (_documents, _rolling, _aggregates, _dead_letters)
    for step in steps:
        step(sessions, cutoff, report, tell)
    if alerts_cutoff is not None:
        _alerts(sessions, alerts_cutoff, report, tell)
    return report


def _documents(
    sessions: sessionmaker[Session], cutoff: datetime, report: PruneReport, tell: Progress
) -> None:
    children = (("document_tickers", DocumentTickerRow), ("votes", VoteRow), ("scores", ScoreRow))
    for name, _ in (*children, ("documents", DocumentRow)):
        report.rows.setdefault(name, 0)
    labelled = exists().where(DocumentLabelRow.document_id == DocumentRow.id)
    end: datetime | None = None
    while True:
        with sessions() as session:  # the oldest left (a gap of months costs one step)
            left = DocumentRow.published_at < cutoff
            if end is not None:
                left = and_(left, DocumentRow.published_at >= end)
            start = session.scalar(select(func.min(DocumentRow.published_at)).where(left))
        if start is None:
            break
        end = min(start + DAY, cutoff)
        in_slice = and_(
            DocumentRow.published_at >= start, DocumentRow.published_at < end, ~labelled
        )
        ids = select(DocumentRow.id).where(in_slice)
        with sessions.begin() as session:
            for name, table in children:
                which = table.document_id.in_(ids)
                report.add(name, _apply(session, table, which, report.dry_run))
            report.add("documents", _apply(session, DocumentRow, in_slice, report.dry_run))
        tell("documents", report.rows["documents"])
    with sessions() as session:
        old = and_(DocumentRow.published_at < cutoff, labelled)
        report.kept["labelled_documents"] = (
            session.scalar(select(func.count()).select_from(DocumentRow).where(old)) or 0
        )


def _rolling(
    sessions: sessionmaker[Session], cutoff: datetime, report: PruneReport, tell: Progress
) -> None:
    for name, table in (("ticker_sentiment", TickerSentimentRow),
                        ("group_sentiment", GroupSentimentRow)):  # fmt: skip
        _by_group(sessions, name, table, table.published_at < cutoff, report, tell)


def _aggregates(
    sessions: sessionmaker[Session], cutoff: datetime, report: PruneReport, tell: Progress
) -> None:
    table = RiskAggregateRow
    _by_group(sessions, "risk_aggregates", table, table.window_end < cutoff, report, tell)


def _by_group(
    sessions: sessionmaker[Session], name: str, table: Any, old: Any, report: PruneReport,
    tell: Progress,
) -> None:  # fmt: skip
    """Delete ``old`` rows one ``(run_id, ticker)`` group at a time: each delete is a range scan
    of the group's index, where one statement over the table would read all of it."""
    report.rows.setdefault(name, 0)
    with sessions() as session:
        groups = session.execute(select(table.run_id, table.ticker).distinct()).tuples().all()
    for start in range(0, len(groups), GROUPS_PER_TRANSACTION):
        with sessions.begin() as session:
            for run_id, ticker in groups[start : start + GROUPS_PER_TRANSACTION]:
                which = and_(table.run_id == run_id, table.ticker == ticker, old)
                report.add(name, _apply(session, table, which, report.dry_run))
        tell(name, report.rows[name])


def _dead_letters(
    sessions: sessionmaker[Session], cutoff: datetime, report: PruneReport, tell: Progress
) -> None:
    with sessions.begin() as session:
        old = DeadLetterRow.last_seen_at < cutoff
        report.add("dead_letters", _apply(session, DeadLetterRow, old, report.dry_run))
    tell("dead_letters", report.rows["dead_letters"])


def _alerts(
    sessions: sessionmaker[Session], cutoff: datetime, report: PruneReport, tell: Progress
) -> None:
    with sessions.begin() as session:
        old_events = select(AlertEventRow.id).where(AlertEventRow.created_at < cutoff)
        done = and_(DeliveryRow.event_id.in_(old_events), DeliveryRow.status.in_((DELIVERED, DEAD)))
        report.add("deliveries", _apply(session, DeliveryRow, done, report.dry_run))
        pending = DeliveryRow.status == PENDING
        left = exists().where(DeliveryRow.event_id == AlertEventRow.id)
        # a dry run deleted no delivery: an event is counted if none of its deliveries is pending
        still = left.where(pending) if report.dry_run else left
        events = and_(AlertEventRow.created_at < cutoff, ~still)
        report.add("alert_events", _apply(session, AlertEventRow, events, report.dry_run))
        alerts = and_(AlertRow.window_end < cutoff, AlertRow.state == AlertState.RESOLVED.value)
        report.add("alerts", _apply(session, AlertRow, alerts, report.dry_run))
    tell("alerts", report.rows["alerts"])


def _apply(session: Session, table: Any, where: Any, dry_run: bool) -> int:
    """Delete the rows ``where`` holds for (or count them, dry): how many."""
    if dry_run:
        return session.scalar(select(func.count()).select_from(table).where(where)) or 0
    result: Any = session.execute(delete(table).where(where))
    return int(result.rowcount)
