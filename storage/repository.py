"""Repository functions: batched, idempotent writes keyed on natural ids, and the reads riskwire needs.

They take a ``Session`` and never commit: the caller owns the transaction.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Insert, String, func, literal, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from riskwire.records import Alert, AlertState, DeadLetter, Document, Score
from storage.base import Base
from storage.tables import (
    AlertRow,
    DeadLetterRow,
    DocumentRow,
    DocumentTickerRow,
    ModelVersionRow,
    ScoreRow,
    TickerSentimentRow,
    VoteRow,
)

CHUNK = 500


def _insert(session: Session, table: type[Base]) -> Insert:
    """The dialect's INSERT, which has ON CONFLICT."""
    dialect = session.get_bind().dialect.name
    if dialect == "postgresql":
        return postgresql.insert(table)
    if dialect == "sqlite":
        return sqlite.insert(table)
    raise NotImplementedError(f"no upsert for dialect {dialect!r}")


def _insert_ignore(session: Session, table: type[Base], rows: Sequence[dict[str, Any]]) -> None:
    """INSERT … ON CONFLICT DO NOTHING, executed on the session's connection as Core (the ORM's
    bulk path costs several times more per row and adds nothing here)."""
    if not rows:
        return
    stmt = _insert(session, table).on_conflict_do_nothing()  # type: ignore[attr-defined]
    connection = session.connection()
    for start in range(0, len(rows), CHUNK):
        connection.execute(stmt, list(rows[start : start + CHUNK]))


def _dedupe(rows: Iterable[dict[str, Any]], *key: str) -> list[dict[str, Any]]:
    """One row per natural key (the last wins), so one batch never conflicts with itself."""
    out: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        out[tuple(row[k] for k in key)] = row
    return list(out.values())


def upsert_documents(session: Session, documents: Sequence[Document]) -> None:
    doc_rows = [
        {
            "id": d.id, "source": d.source, "kind": d.kind.value, "title": d.title,
            "text": d.text, "url": d.url, "lang": d.lang,
            "published_at": d.published_at, "fetched_at": d.fetched_at,
        }
        for d in documents
    ]  # fmt: skip
    ticker_rows = [
        {"document_id": d.id, "ticker": t.ticker, "relevance": t.relevance,
         "published_at": d.published_at}
        for d in documents
        for t in d.tickers
    ]  # fmt: skip
    _insert_ignore(session, DocumentRow, _dedupe(doc_rows, "id"))
    _insert_ignore(session, DocumentTickerRow, _dedupe(ticker_rows, "document_id", "ticker"))


def upsert_scores(session: Session, scores: Sequence[Score]) -> None:
    """Store fused scores and member votes; a score fanned out to several tickers is stored once."""
    score_rows = []
    vote_rows = []
    for s in scores:
        neg, neu, pos = s.probabilities
        score_rows.append(
            {
                "run_id": s.run_id, "document_id": s.document_id, "model_version": s.model_version,
                "published_at": s.published_at, "label": s.label,
                "p_negative": neg, "p_neutral": neu, "p_positive": pos, "score": s.score,
                "confidence": s.confidence, "disagreement": s.disagreement,
            }
        )  # fmt: skip
        for v in s.votes:
            vneg, vneu, vpos = v.probabilities
            vote_rows.append(
                {
                    "document_id": s.document_id, "member": v.member,
                    "model_version": v.model_version, "label": v.label,
                    "p_negative": vneg, "p_neutral": vneu, "p_positive": vpos,
                }
            )  # fmt: skip
    _insert_ignore(session, ScoreRow, _dedupe(score_rows, "run_id", "document_id", "model_version"))
    _insert_ignore(session, VoteRow, _dedupe(vote_rows, "document_id", "member", "model_version"))


def copy_scores(
    session: Session,
    run_id: str,
    model_version: str,
    start: datetime,
    end: datetime,
    document_ids: Sequence[str] | None = None,
    tickers: Sequence[str] = (),
) -> int:
    """Copy stored scores of ``model_version`` published in ``[start, end)`` (of ``document_ids``
    and ``tickers`` when given) to ``run_id``, inside the database: a replay reusing cached scores.
    Scores held by several runs are copied once (the conflict is ignored). Returns rows inserted."""
    if document_ids is not None and not document_ids:
        return 0
    columns = [c.name for c in ScoreRow.__table__.columns]
    source = select(
        *(
            literal(run_id, String()).label("run_id")
            if name == "run_id"
            else getattr(ScoreRow, name)
            for name in columns
        )
    ).where(
        ScoreRow.model_version == model_version,
        ScoreRow.published_at >= start,
        ScoreRow.published_at < end,
        ScoreRow.run_id != run_id,
    )
    if document_ids is not None:
        source = source.where(ScoreRow.document_id.in_(list(document_ids)))
    if tickers:
        mentions = select(DocumentTickerRow.document_id).where(
            DocumentTickerRow.ticker.in_(list(tickers))
        )
        source = source.where(ScoreRow.document_id.in_(mentions))
    insert = _insert(session, ScoreRow).from_select(columns, source)
    result = session.connection().execute(insert.on_conflict_do_nothing())  # type: ignore[attr-defined]
    return int(result.rowcount or 0)


def upsert_ticker_sentiment(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    _insert_ignore(session, TickerSentimentRow, _dedupe(rows, "run_id", "ticker", "document_id"))


def upsert_alerts(session: Session, alerts: Sequence[Alert]) -> None:
    """Insert firing alerts once; a resolved event marks its alert resolved (idempotently)."""
    rows = [_alert_row(a) for a in alerts]
    firing = _dedupe((r for r in rows if r["state"] == AlertState.FIRING), "id")
    resolved = _dedupe((r for r in rows if r["state"] == AlertState.RESOLVED), "id")
    _insert_ignore(session, AlertRow, firing)
    if resolved:
        stmt = _insert(session, AlertRow)
        stmt = stmt.on_conflict_do_update(  # type: ignore[attr-defined]
            index_elements=["id"],
            set_={"state": stmt.excluded.state, "resolved_at": stmt.excluded.resolved_at},  # type: ignore[attr-defined]
        )
        session.execute(stmt, resolved)


def _alert_row(a: Alert) -> dict[str, Any]:
    resolved = a.state == AlertState.RESOLVED
    return {
        "id": a.id, "run_id": a.run_id, "rule": a.rule, "ticker": a.ticker,
        "severity": a.severity.value, "state": a.state.value,
        "window_start": a.window_start, "window_end": a.window_end,
        "fired_at": a.window_end, "resolved_at": a.event_time if resolved else None,
        "measured": a.values, "thresholds": a.thresholds, "evidence": list(a.evidence),
        "explanation": a.explanation,
    }  # fmt: skip


def insert_dead_letters(session: Session, letters: Sequence[DeadLetter]) -> None:
    rows = [
        {
            "id": d.id, "stage": d.stage, "reason": d.reason, "topic": d.topic, "key": d.key,
            "payload": d.payload, "occurred_at": d.occurred_at,
        }
        for d in letters
    ]  # fmt: skip
    _insert_ignore(session, DeadLetterRow, _dedupe(rows, "id"))


def register_model_versions(
    session: Session, entries: Sequence[tuple[str, str, dict[str, Any]]], now: datetime
) -> None:
    """Record (name, version, description) entries once; a known version is left as it was."""
    rows = [
        {"version": version, "name": name, "kind": str(description.get("kind", "")),
         "description": description, "registered_at": now}
        for name, version, description in entries
    ]  # fmt: skip
    _insert_ignore(session, ModelVersionRow, _dedupe(rows, "version"))


def count_rows(session: Session, table: type[Base]) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)


@dataclass(frozen=True)
class TickerSummary:
    ticker: str
    documents: int
    mean_score: float
    alerts: int


def ticker_summary(session: Session, run_id: str = "live") -> list[TickerSummary]:
    """Per ticker: documents, mean fused score and alerts fired, for the CLI's table."""
    docs = (
        select(
            DocumentTickerRow.ticker,
            func.count(func.distinct(ScoreRow.document_id)).label("documents"),
            func.avg(ScoreRow.score).label("mean_score"),
        )
        .join(ScoreRow, ScoreRow.document_id == DocumentTickerRow.document_id)
        .where(ScoreRow.run_id == run_id)
        .group_by(DocumentTickerRow.ticker)
    )
    alerts = dict(
        session.execute(
            select(AlertRow.ticker, func.count())
            .where(AlertRow.run_id == run_id)
            .group_by(AlertRow.ticker)
        ).all()
    )
    return [
        TickerSummary(t, int(n), float(m), int(alerts.get(t, 0)))
        for t, n, m in session.execute(docs).all()
    ]
