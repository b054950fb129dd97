"""Repository functions of alert delivery: API keys, subscriptions, the live alert event feed and the
delivery outbox. Like ``repository``, they take a ``Session`` and never commit.

The outbox is transactional: ``record_alert_events`` runs in the transaction that stores the alerts,
so an alert is stored if and only if its deliveries are queued. Ids are natural (alert + state;
event + target + subscription), so a redelivered batch queues nothing twice.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, select, update
from sqlalchemy.orm import Session

from riskwire.delivery.model import AlertFilter
from riskwire.records import Alert, AlertState, group_key, group_kind, stable_id
from storage.repository import _dedupe, _insert_ignore
from storage.tables import (
    AlertEventRow,
    AlertRow,
    ApiKeyRow,
    DeliveryRow,
    SilenceRow,
    SubscriptionRow,
)

PENDING, DELIVERED, DEAD = "pending", "delivered", "dead"
CANCELLED = "cancelled"  # withdrawn before any attempt: its event was inhibited after it was queued
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
    why = suppressions(session, live, targets.sector_of, now)
    for event in events:
        event["suppressed"] = why.get(event["id"])
    _insert_ignore(session, AlertEventRow, events)
    events = [e for e in events if e["suppressed"] is None]  # stored, but nobody is notified
    inhibit_queued(session, [a for a in live if event_id(a) not in why], targets.sector_of, now)
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


def inhibit_queued(
    session: Session, alerts: Sequence[Alert], sector_of: Mapping[str, str], now: datetime
) -> int:
    """A sector or market alert that fires also mutes the single-name alerts of its family that
    are already queued: events of firing alerts whose deliveries have not been tried yet. Their
    deliveries are cancelled and the events marked, so their resolutions stay quiet too. One that
    some target has already been sent (or tried) is left as it is. Returns how many it muted."""
    inhibitors = [
        a for a in alerts
        if a.state == AlertState.FIRING and a.family and group_kind(a.ticker) in ("sector", "market")
    ]  # fmt: skip
    muted = 0
    for inhibitor in inhibitors:
        candidates = session.execute(
            select(AlertEventRow.id, AlertEventRow.ticker)
            .join(AlertRow, AlertRow.id == AlertEventRow.alert_id)
            .where(
                AlertEventRow.state == "firing", AlertEventRow.suppressed.is_(None),
                AlertRow.state == "firing", AlertRow.run_id == "live",
                AlertRow.family == inhibitor.family,
            )
        ).all()  # fmt: skip
        sector = inhibitor.ticker.removeprefix(group_key("sector", ""))
        names = {
            event: ticker for event, ticker in candidates
            if group_kind(ticker) == "ticker"
            and (group_kind(inhibitor.ticker) == "market" or sector_of.get(ticker) == sector)
        }  # fmt: skip
        if not names:
            continue
        rows = session.scalars(select(DeliveryRow).where(DeliveryRow.event_id.in_(names))).all()
        tried = {r.event_id for r in rows if r.status != PENDING or r.attempts > 0}
        reason = (
            f"inhibited by {inhibitor.ticker} alert {inhibitor.id} ({inhibitor.family}), "
            "after it was queued"
        )
        for event in set(names) - tried:
            session.execute(
                update(AlertEventRow).where(AlertEventRow.id == event).values(suppressed=reason)
            )
            muted += 1
        for row in rows:
            if row.event_id not in tried:
                row.status, row.last_error, row.updated_at = CANCELLED, reason, now
    return muted


def active_silences(session: Session, now: datetime) -> list[SilenceRow]:
    return list(
        session.scalars(
            select(SilenceRow)
            .where(SilenceRow.starts_at <= now, SilenceRow.expires_at > now)
            .order_by(SilenceRow.created_at)
        )
    )


def _silenced(alert: Alert, silence: SilenceRow) -> bool:
    return (
        silence.ticker in (None, alert.ticker)
        and silence.rule in (None, alert.rule)
        and silence.family in (None, alert.family)
    )


def suppressions(
    session: Session, alerts: Sequence[Alert], sector_of: Mapping[str, str], now: datetime
) -> dict[str, str]:
    """Why nobody is to be notified of some of these alerts' events, by event id:

    * **silenced**: an active silence matches the alert's group, rule and family;
    * **inhibited**: a single-name alert fires while a market alert, or an alert of the name's
      sector, of the same family is firing (stored, or in the same batch);
    * a resolution whose firing was not notified is not notified either.
    """
    out: dict[str, str] = {}
    silences = active_silences(session, now)
    families = {a.family for a in alerts if a.family and group_kind(a.ticker) == "ticker"}
    inhibitors: dict[tuple[str, str], str] = {}  # (group key, family) -> alert id
    if families:
        rows = session.execute(
            select(AlertRow.ticker, AlertRow.family, AlertRow.id).where(
                AlertRow.run_id == "live",
                AlertRow.state == "firing",
                AlertRow.family.in_(families),
            )
        ).all()
        inhibitors.update({(t, f): i for t, f, i in rows if f and group_kind(t) != "ticker"})
        for a in alerts:
            if a.state == AlertState.FIRING and group_kind(a.ticker) != "ticker" and a.family:
                inhibitors[(a.ticker, a.family)] = a.id
    resolved = [a for a in alerts if a.state == AlertState.RESOLVED]
    unnotified = set()
    if resolved:
        unnotified = set(
            session.scalars(
                select(AlertEventRow.alert_id).where(
                    AlertEventRow.alert_id.in_([a.id for a in resolved]),
                    AlertEventRow.state == "firing",
                    AlertEventRow.suppressed.is_not(None),
                )
            )
        )
    for a in alerts:
        reason = None
        silence = next((s for s in silences if _silenced(a, s)), None)
        if silence is not None:
            reason = (
                f"silenced by {silence.id} until {silence.expires_at.isoformat()} "
                f"({silence.created_by}: {silence.comment})"
            )
        elif a.state == AlertState.FIRING and group_kind(a.ticker) == "ticker" and a.family:
            for key in (group_key("sector", sector_of.get(a.ticker, "")), group_key("market")):
                if key != group_key("sector", "") and (key, a.family) in inhibitors:
                    reason = f"inhibited by {key} alert {inhibitors[(key, a.family)]} ({a.family})"
                    break
        elif a.state == AlertState.RESOLVED and a.id in unnotified:
            reason = "its firing was not notified"
        if reason is not None:
            out[event_id(a)] = reason
    unnotified_now = {a.id for a in alerts if event_id(a) in out and a.state == AlertState.FIRING}
    for a in resolved:  # fired and resolved in one batch
        if a.id in unnotified_now:
            out.setdefault(event_id(a), "its firing was not notified")
    return out


def create_silence(
    session: Session,
    *,
    ticker: str | None,
    rule: str | None,
    family: str | None,
    duration: timedelta,
    created_by: str,
    comment: str,
    now: datetime,
) -> SilenceRow:
    if duration <= timedelta(0):
        raise ValueError("a silence needs a positive duration")
    row = SilenceRow(
        id=secrets.token_hex(8), ticker=ticker, rule=rule, family=family, created_by=created_by,
        comment=comment, starts_at=now, expires_at=now + duration, created_at=now,
    )  # fmt: skip
    session.add(row)
    session.flush()
    return row


def expire_silence(session: Session, silence_id: str, now: datetime) -> bool:
    row = session.get(SilenceRow, silence_id)
    if row is None or row.expires_at <= now:
        return False
    row.expires_at = now
    return True


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
    """Alert events stored after ``seq``, in order: what an SSE client resuming from ``seq`` missed
    (suppressed ones included: a client skips them, but resumes past them)."""
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
