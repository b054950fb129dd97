"""The outbox and its dispatcher on SQLite and PostgreSQL, against real local HTTP receivers, a
Grafana stand-in that checks Grafana's documented API, and a real Alertmanager."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.delivery.dispatcher import Dispatcher
from riskwire.delivery.model import DELIVERY_HEADER, EVENT_HEADER, verify
from riskwire.delivery.senders import AlertmanagerSender, GrafanaSender, WebhookSender
from riskwire.records import Alert, AlertState
from riskwire.settings import Settings
from storage import delivery as store
from storage.tables import AlertEventRow
from tests.delivery.conftest import add_key, add_subscription, deliveries
from tests.delivery.servers import Alertmanager, FakeGrafana, Receiver
from tests.factories import make_alert


def record(sessions: sessionmaker[Session], alerts: list[Alert], **targets: bool) -> int:
    with sessions.begin() as session:
        return store.record_alert_events(
            session, alerts, store.Targets(**targets), datetime.now(UTC)
        )


def webhook_dispatcher(
    settings: Settings, sessions: sessionmaker[Session], **senders
) -> Dispatcher:
    webhook = WebhookSender(settings.public_url, allow_private=True, timeout_s=2)
    return Dispatcher(settings, sessions, {store.WEBHOOK: webhook, **senders})


def drain(
    dispatcher: Dispatcher,
    done: Callable[[], bool],
    timeout: float = 20,
) -> None:
    """Run dispatcher rounds until ``done()``, as its loop would (retries fall due by themselves)."""
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "deliveries did not settle"
        if not dispatcher.run_once():
            time.sleep(0.02)


def test_events_and_deliveries_are_recorded_once_per_state_and_destination(
    sessions: sessionmaker[Session],
) -> None:
    add_key(sessions)
    add_subscription(sessions, "all", "http://127.0.0.1:9/a")
    add_subscription(sessions, "acme", "http://127.0.0.1:9/b", tickers=["ACME"])
    add_subscription(sessions, "beta", "http://127.0.0.1:9/c", tickers=["BETA"])
    add_subscription(sessions, "critical", "http://127.0.0.1:9/d", min_severity="critical")
    add_subscription(sessions, "paused", "http://127.0.0.1:9/e", active=False)
    add_subscription(sessions, "sse", None)
    firing = make_alert()
    resolved = firing.model_copy(update={"state": AlertState.RESOLVED})
    replayed = make_alert(run_id="replay-1")
    for _ in range(2):  # a redelivered batch queues nothing twice
        record(sessions, [firing, resolved, replayed], grafana=True, alertmanager=True)
    with sessions() as session:
        events = session.scalars(select(AlertEventRow).order_by(AlertEventRow.seq)).all()
        assert [(e.alert_id, e.state) for e in events] == [
            (firing.id, "firing"),
            (firing.id, "resolved"),
        ]
        assert events[0].seq < events[1].seq
    rows = deliveries(sessions)
    per_event = {(r.target, r.subscription_id) for r in rows if r.event_id == events[0].id}
    assert per_event == {
        ("grafana", None), ("alertmanager", None), ("webhook", "all"), ("webhook", "acme")
    }  # fmt: skip
    assert len(rows) == 8 and {r.status for r in rows} == {"pending"}


def test_a_receiver_failing_twice_gets_one_correctly_signed_delivery(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    receiver = Receiver(fail_first=2)
    try:
        add_key(sessions)
        add_subscription(sessions, "s1", receiver.url + "/hook")
        alert = make_alert()
        record(sessions, [alert])
        dispatcher = webhook_dispatcher(settings, sessions)
        drain(dispatcher, lambda: deliveries(sessions)[0].status != "pending")
        dispatcher.close()
        (row,) = deliveries(sessions)
        assert (row.status, row.attempts, row.last_error) == ("delivered", 3, None)
        attempts = dispatcher.metrics.registry.get_sample_value
        name = "riskwire_delivery_attempts_total"
        assert attempts(name, {"target": "webhook", "outcome": "retry"}) == 2
        assert attempts(name, {"target": "webhook", "outcome": "delivered"}) == 1
        sent = attempts("riskwire_delivery_send_seconds_count", {"target": "webhook"})
        assert sent == 3
        assert len(receiver.requests) == 3
        assert len({r.body for r in receiver.requests}) == 1  # the same event each time
        (good,) = receiver.accepted()
        assert verify("secret-s1", good.headers, good.body, now=time.time())
        assert good.headers[DELIVERY_HEADER] == row.id
        payload = good.json()
        assert payload["alert"]["id"] == alert.id and payload["state"] == "firing"
        assert good.headers[EVENT_HEADER] == payload["event_id"] == row.event_id
        assert payload["link"].endswith(f"/alerts/{alert.id}")
    finally:
        receiver.close()


def test_a_delivery_is_dead_after_its_last_attempt_with_the_reason_kept(
    settings: Settings, sessions: sessionmaker[Session]
) -> None:
    receiver = Receiver(fail_first=10**6)
    try:
        add_key(sessions)
        add_subscription(sessions, "s1", receiver.url)
        record(sessions, [make_alert()])
        dispatcher = webhook_dispatcher(settings, sessions)
        drain(dispatcher, lambda: deliveries(sessions)[0].status == "dead")
        dispatcher.close()
        (row,) = deliveries(sessions)
        assert row.attempts == settings.delivery_max_attempts == len(receiver.requests)
        attempts = dispatcher.metrics.registry.get_sample_value
        name = "riskwire_delivery_attempts_total"
        assert attempts(name, {"target": "webhook", "outcome": "dead"}) == 1
        assert attempts(name, {"target": "webhook", "outcome": "retry"}) == row.attempts - 1
        assert row.last_error is not None and row.last_error.startswith("HTTP 500")
    finally:
        receiver.close()


def test_a_receiver_that_is_down_gets_everything_once_it_is_back(
    settings: Settings, sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    add_key(sessions)
    add_subscription(sessions, "s1", receiver.url)
    receiver.down()
    alerts = [make_alert() for _ in range(5)]
    record(sessions, alerts)
    patient = settings.model_copy(update={"delivery_max_attempts": 100})
    dispatcher = webhook_dispatcher(patient, sessions)
    deadline = time.monotonic() + 1.0  # down for a while: attempts fail and are retried later
    while time.monotonic() < deadline:
        dispatcher.run_once()
        time.sleep(0.02)
    down = deliveries(sessions)
    assert all(r.status == "pending" and r.attempts >= 1 for r in down)
    assert all("ConnectError" in (r.last_error or "") for r in down)
    receiver.up()
    drain(dispatcher, lambda: all(r.status == "delivered" for r in deliveries(sessions)))
    dispatcher.close()
    got = sorted(r.json()["alert"]["id"] for r in receiver.accepted())
    assert got == sorted(a.id for a in alerts)  # every one, once


def test_deliveries_to_a_deleted_subscription_or_a_private_address_end_dead(
    settings: Settings, sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    add_key(sessions)
    add_subscription(sessions, "gone", receiver.url)
    add_subscription(sessions, "local", receiver.url)
    record(sessions, [make_alert()])
    with sessions.begin() as session:
        session.delete(session.get(store.SubscriptionRow, "gone"))
    strict = WebhookSender(settings.public_url, allow_private=False, timeout_s=2)
    dispatcher = Dispatcher(settings, sessions, {store.WEBHOOK: strict})
    drain(dispatcher, lambda: all(r.status == "dead" for r in deliveries(sessions)))
    dispatcher.close()
    reasons = {r.subscription_id: r.last_error for r in deliveries(sessions)}
    assert "no URL" in (reasons["gone"] or "")
    assert "loopback" in (reasons["local"] or "")
    assert receiver.requests == []  # nothing was sent to either


def test_alerts_and_resolutions_become_grafana_annotations(
    settings: Settings, sessions: sessionmaker[Session], grafana: FakeGrafana
) -> None:
    firing = make_alert(severity="critical")
    later = firing.window_end + timedelta(hours=1)
    resolved = firing.model_copy(update={"state": AlertState.RESOLVED, "event_time": later})
    record(sessions, [firing, resolved], grafana=True)
    sender = GrafanaSender(grafana.url, grafana.token, settings.public_url)
    dispatcher = Dispatcher(settings, sessions, {store.GRAFANA: sender})
    drain(dispatcher, lambda: all(r.status != "pending" for r in deliveries(sessions)))
    dispatcher.close()
    assert grafana.violations == []
    assert {r.status for r in deliveries(sessions)} == {"delivered"}
    # sent concurrently, so in either order
    (point,) = [a for a in grafana.annotations if "resolved" in a["tags"]]
    (region,) = [a for a in grafana.annotations if "firing" in a["tags"]]
    assert region["time"] == int(firing.window_start.timestamp() * 1000)
    assert region["timeEnd"] == int(firing.window_end.timestamp() * 1000)
    assert point["time"] == point["timeEnd"] == int(later.timestamp() * 1000)
    for tag in ("ticker:ACME", "rule:negative_surge", "severity:critical"):
        assert tag in region["tags"] and tag in point["tags"]
    assert "resolved" in point["tags"] and firing.explanation in region["text"]
    ids = sorted(r.response["annotation_id"] for r in deliveries(sessions) if r.response)
    assert ids == [1, 2]


def test_grafana_being_down_delays_annotations_without_losing_them(
    settings: Settings, sessions: sessionmaker[Session], grafana: FakeGrafana
) -> None:
    grafana.down()
    record(sessions, [make_alert()], grafana=True)
    sender = GrafanaSender(grafana.url, grafana.token, settings.public_url, timeout_s=2)
    dispatcher = Dispatcher(settings, sessions, {store.GRAFANA: sender})
    dispatcher.run_once()
    (row,) = deliveries(sessions)
    assert row.status == "pending" and "unreachable" in (row.last_error or "")
    grafana.up()
    drain(dispatcher, lambda: deliveries(sessions)[0].status == "delivered")
    dispatcher.close()
    assert len(grafana.annotations) == 1 and grafana.violations == []


@pytest.mark.integration
def test_alertmanager_lists_a_firing_alert_and_ends_it_when_resolved(
    settings: Settings, sessions: sessionmaker[Session], alertmanager: Alertmanager
) -> None:
    ticker = f"AM{time.time_ns() % 10**8}"  # the server is shared by the session
    firing = make_alert(ticker=ticker, severity="critical")
    record(sessions, [firing], alertmanager=True)
    sender = AlertmanagerSender(alertmanager.url, settings.public_url, resend_s=60)
    dispatcher = Dispatcher(settings, sessions, {store.ALERTMANAGER: sender})
    drain(dispatcher, lambda: deliveries(sessions)[0].status == "delivered")
    (listed,) = alertmanager.alerts(filter=f'ticker="{ticker}"')
    assert listed["labels"] == {
        "alertname": "negative_surge", "ticker": ticker, "severity": "critical",
        "alert_id": firing.id, "source": "riskwire",
    }  # fmt: skip
    assert listed["status"]["state"] == "active"
    assert listed["generatorURL"].endswith(f"/alerts/{firing.id}")
    assert firing.explanation == listed["annotations"]["description"]
    record(sessions, [firing.model_copy(update={"state": AlertState.RESOLVED})], alertmanager=True)
    drain(dispatcher, lambda: all(r.status == "delivered" for r in deliveries(sessions)))
    dispatcher.close()
    # a resolved alert (endsAt in the past) is no longer among the active ones
    assert alertmanager.alerts(filter=f'ticker="{ticker}"', active="true") == []


def test_firing_alerts_are_reasserted_to_alertmanager_until_resolved(
    settings: Settings, sessions: sessionmaker[Session], receiver: Receiver
) -> None:
    """The keep-alive posts every live alert still firing (to a receiver standing in for it)."""
    from storage.repository import upsert_alerts

    firing, done = make_alert(), make_alert()
    with sessions.begin() as session:
        upsert_alerts(
            session, [firing, done, done.model_copy(update={"state": AlertState.RESOLVED})]
        )
    record(sessions, [firing, done])
    sender = AlertmanagerSender(receiver.url, settings.public_url, resend_s=60)
    dispatcher = Dispatcher(settings, sessions, {store.ALERTMANAGER: sender})
    assert dispatcher.resend_firing() == 1
    dispatcher.close()
    (posted,) = receiver.requests
    assert posted.path == "/api/v2/alerts"
    assert [a["labels"]["alert_id"] for a in json.loads(posted.body)] == [firing.id]
