"""scored -> alerts: per-ticker rolling sentiment in event time and the negative-surge rule.

The ``scored`` topic is keyed by ticker, so one worker owns all of a ticker's state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import faust
from sqlalchemy.orm import Session

from riskwire.records import Alert, DeadLetter, Score
from storage import repository
from streams.context import WorkerContext, decode_events, event_batches, send_dead
from streams.pipeline import RiskEngine

log = logging.getLogger(__name__)
STAGE = "risk"


def apply_scores(
    engine: RiskEngine, scores: Sequence[Score], now: datetime
) -> tuple[list[dict[str, Any]], list[Alert], list[DeadLetter]]:
    """Feed scores to the engine in order; collect rows and alerts, and dead letters for failures."""
    rows: list[dict[str, Any]] = []
    alerts: list[Alert] = []
    dead: list[DeadLetter] = []
    for score in scores:
        try:
            update = engine.process(score)
        except Exception as exc:  # a bug must cost one record, never the batch
            log.exception("risk evaluation failed for %s", score.document_id)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            dead.append(
                DeadLetter.of(STAGE, reason, score.to_json(), occurred_at=now, key=score.ticker)
            )
            continue
        if update.row is not None:
            rows.append(update.row)
        alerts.extend(update.alerts)
    return rows, alerts, dead


def persist_risk(
    session: Session, batch: Sequence[tuple[list[dict[str, Any]], list[Alert]]]
) -> None:
    for rows, alerts in batch:
        repository.upsert_ticker_sentiment(session, rows)
        repository.upsert_alerts(session, alerts)


def register(app: faust.App, ctx: WorkerContext) -> None:
    scored = app.topic(ctx.topics.scored)
    alerts_topic = app.topic(ctx.topics.alerts)
    dead = app.topic(ctx.topics.deadletter)

    @app.agent(scored, name="risk")
    async def risk_agent(stream: faust.StreamT[bytes]) -> None:
        async for events in event_batches(stream, ctx.settings):
            now = datetime.now(UTC)
            scores, bad = decode_events(events, Score, STAGE, now)
            await send_dead(dead, bad)
            rows, alerts, failed = apply_scores(ctx.risk, scores, now)
            failed += await ctx.write(
                [(rows, alerts)],
                persist_risk,
                "persist",
                lambda item: (None, repr([r["document_id"] for r in item[0]])),
            )
            await send_dead(dead, failed)
            for alert in alerts:
                log.info(
                    "alert %s %s %s: %s",
                    alert.state,
                    alert.severity,
                    alert.ticker,
                    alert.explanation,
                )
                await alerts_topic.send(key=alert.ticker.encode(), value=alert.to_json())
