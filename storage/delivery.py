"""Repository functions of alert delivery: API keys, subscriptions, the live alert event feed and the
delivery outbox. Like ``repository``, they take a ``Session`` and never commit.

The outbox is transactional: ``record_alert_events`` runs in the transaction that stores the alerts,
so an alert is stored if and only if its deliveries are queued. Ids are natural (alert + state;
event + target + subscription), so a redelivered batch queues nothing twice.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from riskwire.delivery.model import AlertFilter
from riskwire.records import Alert, stable_id
from storage.repository import _dedupe, _insert_ignore
from storage.tables import AlertEventRow, ApiKeyRow, DeliveryRow, SubscriptionRow

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
WEBHOOK, GRAFANA, ALERTMANAGER = "webhook", "grafana", "alertmanager"


@dataclass(frozen=True)
class Targets:
    """Where live alerts go besides webhook subscriptions, and the ticker -> sector mapping that
    sector filters use."""

    grafana: bool = False
    alertmanager: bool = False
    sector_of: Mapping[str, str] = field(default_factory=dict)


def event_id(alert: Alert) -> str:
    return stable_id(alert.id, str(alert.state))


def delivery_id(event: str, target: str, subscription: str | None) -> str:
    return stable_id(event, target, subscription or "")


def record_alert_events(
    session: Session, alerts: Sequence[Alert], targets: Targets, now: datetime
) -> int:
    """Store the live alerts' events once each and queue their deliveries: Grafana and
    Alertmanager when configured, and every active webhook subscription whose filter matches.
    Returns the number of events offered (replay runs are never delivered)."""
    live = [a for a in alerts if a.run_id == "live"]
    if not live:
        return 0
    events = _dedupe(
        (
            {
                "id": event_id(a), "alert_id": a.id, "rule": a.rule, "ticker": a.ticker,
                "severity": str(a.severity), "state": str(a.state), "event_time": a.event_time,
                "created_at": now, "alert": json.loads(a.to_json()),
            }
            for a in live
        ),
        "id",
    )  # fmt: skip
    _insert_ignore(session, AlertEventRow, events)
    subscriptions = session.scalars(
        select(SubscriptionRow).where(
            SubscriptionRow.channel == WEBHOOK, SubscriptionRow.active.is_(True)
        )
    ).all()
    filters = [(s.id, filter_of(s)) for s in subscriptions]
    deliveries = []
    for event in events:
        wanted: list[tuple[str, str | None]] = []
        if targets.grafana:
            wanted.append((GRAFANA, None))
        if targets.alertmanager:
            wanted.append((ALERTMANAGER, None))
        wanted += [(WEBHOOK, sid) for sid, f in filters if f.matches(event, targets.sector_of)]
        deliveries += [
            {
                "id": delivery_id(event["id"], target, sid), "event_id": event["id"],
                "target": target, "subscription_id": sid, "status": PENDING, "attempts": 0,
                "next_attempt_at": now, "last_error": None, "response": None, "created_at": now,
                "delivered_at": None, "updated_at": now,
            }
            for target, sid in wanted
        ]  # fmt: skip
    _insert_ignore(session, DeliveryRow, deliveries)
    return len(events)


def filter_of(subscription: SubscriptionRow) -> AlertFilter:
    return AlertFilter(
        tickers=tuple(subscription.tickers),
        sectors=tuple(subscription.sectors),
        rules=tuple(subscription.rules),
        min_severity=subscription.min_severity,
    )


def claim_due(
    session: Session, now: datetime, limit: int, lease: timedelta
) -> list[tuple[DeliveryRow, AlertEventRow, SubscriptionRow | None]]:
    """Pending deliveries due by ``now``, oldest first, each leased for ``lease`` (its next attempt
    moved past the lease, so a dispatcher that dies mid-send leaves it to be retried). On PostgreSQL
    rows another dispatcher holds are skipped, so several can run."""
    query = (
        select(DeliveryRow)
        .where(DeliveryRow.status == PENDING, DeliveryRow.next_attempt_at <= now)
        .order_by(DeliveryRow.next_attempt_at, DeliveryRow.created_at, DeliveryRow.id)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        query = query.with_for_update(skip_locked=True)
    rows = list(session.scalars(query))
    if not rows:
        return []
    events = {
        e.id: e
        for e in session.scalars(
            select(AlertEventRow).where(AlertEventRow.id.in_({r.event_id for r in rows}))
        )
    }
    wanted = {r.subscription_id for r in rows if r.subscription_id}
    subscriptions = (
        {
            s.id: s
            for s in session.scalars(select(SubscriptionRow).where(SubscriptionRow.id.in_(wanted)))
        }
        if wanted
        else {}
    )
    for row in rows:
        row.next_attempt_at = now + lease
        row.updated_at = now
    session.flush()
    return [(r, events[r.event_id], subscriptions.get(r.subscription_id or "")) for r in rows]


def mark_delivered(
    session: Session, delivered: Sequence[tuple[str, dict[str, Any] | None]], now: datetime
) -> None:
    """Record successful deliveries (id, what to keep of the answer) in one statement."""
    if not delivered:
        return
    statement = (
        update(DeliveryRow)
        .where(DeliveryRow.id == bindparam("delivery"), DeliveryRow.status == PENDING)
        .values(
            status=DELIVERED, attempts=DeliveryRow.attempts + 1, delivered_at=now,
            response=bindparam("answer"), last_error=None, updated_at=now,
        )
    )  # fmt: skip
    session.connection().execute(
        statement, [{"delivery": d, "answer": response} for d, response in delivered]
    )


def mark_failed(
    session: Session, delivery: str, now: datetime, error: str, retry_in: timedelta | None
) -> str:
    """Count a failed attempt: retried after ``retry_in``, or dead (with the reason kept) when None."""
    row = session.get(DeliveryRow, delivery)
    if row is None or row.status != PENDING:
        return row.status if row else DEAD
    row.attempts += 1
    row.last_error = error[:2000]
    row.updated_at = now
    if retry_in is None:
        row.status = DEAD
    else:
        row.next_attempt_at = now + retry_in
    return row.status


def events_after(session: Session, seq: int, limit: int) -> list[AlertEventRow]:
    """Alert events stored after ``seq``, in order: what an SSE client resuming from ``seq`` missed."""
    return list(
        session.scalars(
            select(AlertEventRow)
            .where(AlertEventRow.seq > seq)
            .order_by(AlertEventRow.seq)
            .limit(limit)
        )
    )


def last_event_seq(session: Session) -> int:
    return int(session.scalar(select(func.max(AlertEventRow.seq))) or 0)


def create_api_key(session: Session, name: str, scopes: list[str], now: datetime) -> str:
    """A new key with these scopes; returns its token, which is not stored anywhere."""
    from riskwire.delivery import keys

    key = keys.new_key()
    session.add(
        ApiKeyRow(
            id=key.id, name=name, secret_hash=key.secret_hash, scopes=keys.check_scopes(scopes),
            created_at=now,
        )
    )  # fmt: skip
    return key.token


def revoke_api_key(session: Session, key_id: str, now: datetime) -> bool:
    row = session.get(ApiKeyRow, key_id)
    if row is None or row.revoked_at is not None:
        return False
    row.revoked_at = now
    return True
