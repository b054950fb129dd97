"""scored -> alerts: per-ticker rolling sentiment in event time and the negative-surge rule.

The ``scored`` topic is keyed by ticker, so one worker owns all of a ticker's state.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime

import faust
from sqlalchemy.orm import Session

from riskwire.records import DeadLetter, Score
from storage import delivery, repository
from streams.context import (
    WorkerContext,
    decode_events,
    event_batches,
    send_dead,
    storage_refused,
)
from streams.pipeline import RiskEngine, RiskUpdate

log = logging.getLogger(__name__)
STAGE = "risk"


def apply_scores(
    engine: RiskEngine, scores: Sequence[Score], now: datetime
) -> tuple[list[tuple[Score, RiskUpdate]], list[DeadLetter]]:
    """Feed scores to the engine in order; each score's update, and dead letters for failures."""
    updates: list[tuple[Score, RiskUpdate]] = []
    dead: list[DeadLetter] = []
    for score in scores:
        try:
            updates.append((score, engine.process(score)))
        except Exception as exc:  # a bug must cost one record, never the batch
            log.exception("risk evaluation failed for %s", score.document_id)
            reason = f"unexpected {type(exc).__name__}: {exc}"
            dead.append(
                DeadLetter.of(STAGE, reason, score.to_json(), occurred_at=now, key=score.ticker)
            )
    return updates, dead


def persist_risk(
    session: Session,
    updates: Sequence[tuple[Score, RiskUpdate]],
    targets: delivery.Targets | None = None,
) -> None:
    """Rolling rows and alerts, and (in the same transaction: the outbox) the alerts' events and
    their deliveries."""
    rows = [u.row for _, u in updates if u.row is not None]
    alerts = [a for _, u in updates for a in u.alerts]
    repository.upsert_ticker_sentiment(session, rows)
    repository.upsert_alerts(session, alerts)
    if alerts:
        delivery.record_alert_events(
            session, alerts, targets or delivery.Targets(), datetime.now(UTC)
        )


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
            updates, failed = apply_scores(ctx.risk, scores, now)
            refused = await ctx.write(
                updates, lambda session, batch: persist_risk(session, batch, ctx.targets)
            )
            failed += [storage_refused(e, s.to_json(), s.ticker, now) for (s, _), e in refused]
            await send_dead(dead, failed)
            lost = {(s.ticker, s.document_id) for (s, _), _ in refused}
            stored = [u for s, u in updates if (s.ticker, s.document_id) not in lost]
            for alert in (a for u in stored for a in u.alerts):
                log.info(
                    "alert %s %s %s: %s",
                    alert.state,
                    alert.severity,
                    alert.ticker,
                    alert.explanation,
                )
                await alerts_topic.send(key=alert.ticker.encode(), value=alert.to_json())
