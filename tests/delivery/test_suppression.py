"""Silences and inhibition on SQLite and PostgreSQL: muted alerts are stored, with the reason,
and nobody is notified of them; everything else is delivered as before."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import Alert, AlertState
from storage import delivery as store
from storage import repository
from storage.tables import AlertEventRow
from tests.delivery.conftest import add_key, add_subscription, deliveries
from tests.factories import make_alert

SECTORS = {"XOM": "Energy", "CVX": "Energy", "AAPL": "Information Technology"}


def store_alerts(sessions: sessionmaker[Session], alerts: list[Alert], at: datetime) -> None:
    """As the risk stage does: alerts and their events in one transaction."""
    with sessions.begin() as session:
        repository.upsert_alerts(session, alerts)
        store.record_alert_events(session, alerts, store.Targets(sector_of=SECTORS), at)


def suppressed(sessions: sessionmaker[Session]) -> dict[tuple[str, str], str | None]:
    with sessions() as session:
        rows = session.scalars(select(AlertEventRow)).all()
        return {(r.ticker, r.state): r.suppressed for r in rows}


def firing_event(sessions: sessionmaker[Session], alert: Alert) -> AlertEventRow:
    with sessions() as session:
        return session.scalars(
            select(AlertEventRow).where(
                AlertEventRow.alert_id == alert.id, AlertEventRow.state == "firing"
            )
        ).one()


def delivered_tickers(sessions: sessionmaker[Session]) -> set[str]:
    with sessions() as session:
        events = {e.id: e.ticker for e in session.scalars(select(AlertEventRow))}
    return {events[d.event_id] for d in deliveries(sessions)}


def test_a_silence_mutes_matching_alerts_until_it_expires(
    sessions: sessionmaker[Session],
) -> None:
    add_key(sessions)
    add_subscription(sessions, "all", "http://127.0.0.1:9/a")
    now = datetime.now(UTC)
    with sessions.begin() as session:
        silence = store.create_silence(
            session, ticker="XOM", rule=None, family=None, duration=timedelta(hours=2),
            created_by="desk", comment="known: refinery outage", now=now,
        )  # fmt: skip
    fired = make_alert(ticker="XOM", family="negative_surge")
    other = make_alert(ticker="AAPL", family="negative_surge")
    store_alerts(sessions, [fired, other], now)
    why = suppressed(sessions)
    assert why[("XOM", "firing")] is not None and silence.id in why[("XOM", "firing")]
    assert "refinery outage" in why[("XOM", "firing")]
    assert why[("AAPL", "firing")] is None
    assert delivered_tickers(sessions) == {"AAPL"}

    # its resolution is not notified either, even after the silence has gone
    with sessions.begin() as session:
        assert store.expire_silence(session, silence.id, now + timedelta(minutes=1))
        assert not store.expire_silence(session, silence.id, now + timedelta(minutes=2))
    resolved = fired.model_copy(update={"state": AlertState.RESOLVED})
    store_alerts(sessions, [resolved], now + timedelta(minutes=3))
    assert suppressed(sessions)[("XOM", "resolved")] == "its firing was not notified"
    later = make_alert(ticker="XOM", family="negative_surge")
    store_alerts(sessions, [later], now + timedelta(minutes=4))  # expired: delivered again
    assert len([d for d in deliveries(sessions)]) == 2


def test_a_sector_or_market_alert_inhibits_single_name_alerts_of_its_family(
    sessions: sessionmaker[Session],
) -> None:
    add_key(sessions)
    add_subscription(sessions, "all", "http://127.0.0.1:9/a")
    now = datetime.now(UTC)
    sector = make_alert(ticker="sector:Energy", rule="sector_surge", family="negative_surge")
    store_alerts(sessions, [sector], now)
    same_family = make_alert(ticker="XOM", family="negative_surge")
    other_family = make_alert(ticker="CVX", rule="shock", family="sentiment_z")
    other_sector = make_alert(ticker="AAPL", family="negative_surge")
    store_alerts(sessions, [same_family, other_family, other_sector], now)
    why = suppressed(sessions)
    assert (
        why[("XOM", "firing")] == f"inhibited by sector:Energy alert {sector.id} (negative_surge)"
    )
    assert why[("CVX", "firing")] is None and why[("AAPL", "firing")] is None
    assert delivered_tickers(sessions) == {"sector:Energy", "CVX", "AAPL"}

    market = make_alert(ticker="market", rule="market_shock", family="sentiment_z")
    name = make_alert(ticker="AAPL", rule="shock", family="sentiment_z")
    store_alerts(sessions, [market, name], now)  # in one batch, too
    row = firing_event(sessions, name)
    assert row.suppressed is not None and "market" in row.suppressed

    # once the sector alert has resolved, single names notify again
    store_alerts(sessions, [sector.model_copy(update={"state": AlertState.RESOLVED})], now)
    again = make_alert(ticker="XOM", family="negative_surge")
    store_alerts(sessions, [again], now)
    assert firing_event(sessions, again).suppressed is None


def test_a_sector_alert_withdraws_queued_single_name_alerts_of_its_family(
    sessions: sessionmaker[Session],
) -> None:
    add_key(sessions)
    add_subscription(sessions, "all", "http://127.0.0.1:9/a")
    now = datetime.now(UTC)
    queued = make_alert(ticker="XOM", family="negative_surge")
    sent = make_alert(ticker="CVX", family="negative_surge")
    other_family = make_alert(ticker="XOM", rule="volume_spike", family="volume")
    other_sector = make_alert(ticker="AAPL", family="negative_surge")
    store_alerts(sessions, [queued, sent, other_family, other_sector], now)
    with sessions.begin() as session:  # CVX's notification has gone out already
        event = firing_event(sessions, sent).id
        store.mark_delivered(
            session, [(d.id, None) for d in deliveries(sessions) if d.event_id == event], now
        )

    sector = make_alert(ticker="sector:Energy", family="negative_surge")
    store_alerts(sessions, [sector], now + timedelta(seconds=5))
    why = firing_event(sessions, queued).suppressed
    assert why is not None and "sector:Energy" in why and "after it was queued" in why
    assert firing_event(sessions, sent).suppressed is None  # too late: it was sent
    assert firing_event(sessions, other_family).suppressed is None
    assert firing_event(sessions, other_sector).suppressed is None
    name = {firing_event(sessions, a).id: f"{a.ticker}/{a.family}"
            for a in (queued, sent, other_family, other_sector)}  # fmt: skip
    status = {name[d.event_id]: d.status for d in deliveries(sessions) if d.event_id in name}
    assert status == {
        "XOM/negative_surge": store.CANCELLED, "CVX/negative_surge": store.DELIVERED,
        "XOM/volume": store.PENDING, "AAPL/negative_surge": store.PENDING,
    }  # fmt: skip
    # the cancelled one's resolution stays quiet too
    store_alerts(sessions, [queued.model_copy(update={"state": AlertState.RESOLVED})],
                 now + timedelta(minutes=1))  # fmt: skip
    assert suppressed(sessions)[("XOM", "resolved")] == "its firing was not notified"
