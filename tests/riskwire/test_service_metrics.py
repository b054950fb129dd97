"""The API's and dispatcher's metrics: the outbox, feeds and replay jobs as the database has them
(on SQLite and PostgreSQL), served at the API's ``/metrics``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select

from ingest.feeds import Health, store_health
from riskwire.api import create_api
from riskwire.broker import free_port
from riskwire.replay import ReplaySpec, create_job
from riskwire.service_metrics import ServiceMetrics
from riskwire.settings import load_settings
from storage import delivery as store
from storage import make_engine, session_factory, upgrade
from storage.tables import DeliveryRow
from tests.factories import make_alert
from tests.replay_helpers import DAY0, lexicon_ensemble


def test_the_outbox_feeds_and_jobs_are_read_from_the_database(
    database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    settings = load_settings(database_url=database_url, data_dir=tmp_path)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    now = datetime.now(UTC)
    with sessions.begin() as session:  # two alerts, each to Grafana and Alertmanager
        store.record_alert_events(session, [make_alert(ticker="ACME"), make_alert(ticker="BETA")],
                                  store.Targets(grafana=True, alertmanager=True), now)  # fmt: skip
    with sessions.begin() as session:
        rows = session.scalars(select(DeliveryRow).order_by(DeliveryRow.id)).all()
        grafana = [r for r in rows if r.target == store.GRAFANA]
        store.mark_delivered(session, [(grafana[0].id, {})], now)
        store.mark_failed(session, grafana[1].id, now, "HTTP 403", None)  # dead
        late = now - timedelta(minutes=10)
        for row in rows:
            row.created_at = late if row.target == store.ALERTMANAGER else row.created_at
        wire = Health("wire", "news", "https://x/rss", 60, 600, started_at=now,
                      last_item_at=now - timedelta(seconds=30),
                      last_poll_at=now - timedelta(seconds=20))  # fmt: skip
        down = Health("down", "social", "https://y/api", 60, 600, started_at=now,
                      consecutive_errors=5, last_error="HTTP 503")  # fmt: skip
        store_health(session, [wire.row(now), down.row(now)])
    create_job(sessions, settings, ReplaySpec(start=DAY0, end=DAY0 + timedelta(days=1)))

    registry = ServiceMetrics(sessions).registry
    value = registry.get_sample_value
    assert value("riskwire_deliveries_pending", {"target": "alertmanager"}) == 2
    assert value("riskwire_deliveries_pending", {"target": "grafana"}) == 0  # none left
    assert value("riskwire_deliveries_pending", {"target": "webhook"}) == 0  # none ever
    assert value("riskwire_delivery_oldest_pending_seconds", {"target": "grafana"}) == 0
    assert value("riskwire_deliveries_dead", {"target": "grafana"}) == 1
    oldest = value("riskwire_delivery_oldest_pending_seconds", {"target": "alertmanager"})
    assert oldest is not None and 595 < oldest < 700
    assert value("riskwire_feed_status", {"source": "wire", "kind": "news", "status": "ok"}) == 1
    assert (
        value("riskwire_feed_status", {"source": "wire", "kind": "news", "status": "failing"}) == 0
    )
    assert (
        value("riskwire_feed_status", {"source": "down", "kind": "social", "status": "failing"})
        == 1
    )
    assert value("riskwire_feed_consecutive_errors", {"source": "down"}) == 5
    age = value("riskwire_feed_last_item_age_seconds", {"source": "wire"})
    assert age is not None and 25 < age < 120
    assert value("riskwire_feed_last_item_age_seconds", {"source": "down"}) is None  # never had one
    poll_age = value("riskwire_feed_last_poll_age_seconds", {"source": "wire"})
    assert poll_age is not None and 15 < poll_age < 110
    assert value("riskwire_feed_expected_interval_seconds", {"source": "wire"}) == 60
    assert value("riskwire_replay_jobs", {"status": "pending"}) == 1
    assert value("riskwire_replay_jobs", {"status": "failed"}) == 0

    # the API serves them, in Prometheus's text format
    ensemble = lexicon_ensemble()
    with TestClient(create_api(settings, lambda: ensemble)) as client:
        response = client.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }
    assert samples[("riskwire_deliveries_dead", (("target", "grafana"),))] == 1
    engine.dispose()


def test_an_unreadable_database_leaves_its_metrics_out_and_the_scrape_answers(
    tmp_path: Path,
) -> None:
    sessions = session_factory(make_engine(f"sqlite:///{tmp_path / 'never-migrated.db'}"))
    metrics = ServiceMetrics(sessions)
    metrics.attempts.labels("webhook", "delivered").inc()
    names = {family.name for family in metrics.registry.collect()}
    assert "riskwire_delivery_attempts" in names
    assert not names & {"riskwire_deliveries_pending", "riskwire_feed_status"}


def test_a_dispatcher_alone_serves_its_metrics_and_health(tmp_path: Path) -> None:
    """`riskwire deliver` on RISKWIRE_METRICS_PORT: the same server as a worker's."""
    sessions = session_factory(make_engine(f"sqlite:///{tmp_path / 'riskwire.db'}"))
    metrics = ServiceMetrics(sessions)
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    try:
        metrics.attempts.labels("grafana", "retry").inc(2)
        text = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert 'riskwire_delivery_attempts_total{outcome="retry",target="grafana"} 2.0' in text
        assert httpx.get(f"http://127.0.0.1:{port}/healthz").status_code == 200
    finally:
        metrics.stop()
