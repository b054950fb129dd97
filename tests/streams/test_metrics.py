"""A worker's metrics: counts by label, values read at scrape time, and the /metrics endpoint."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from aiokafka.structs import TopicPartition

from ingest import JsonlSource, RawProducer
from ingest.feeds import Health, store_health
from riskwire.broker import EmbeddedBroker, free_port
from riskwire.demo import SAMPLE, expected_outcome
from riskwire.records import DeadLetter
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from streams.metrics import WorkerMetrics, consumer_lag
from tests.kafka_helpers import stream_settings
from tests.metrics_helpers import metric, prometheus, query, scrape


def event(topic: str) -> Any:
    return SimpleNamespace(message=SimpleNamespace(topic=topic))


@pytest.fixture
def served() -> Any:
    metrics = WorkerMetrics()
    port = free_port()
    metrics.serve(port, "127.0.0.1")
    yield metrics, port
    metrics.stop()


def test_batches_and_dead_letters_are_counted_by_topic_and_stage(served: Any) -> None:
    metrics, port = served
    metrics.took([event("rw.docs"), event("rw.raw.news"), event("rw.docs")])
    metrics.took([event("rw.docs")])
    now = datetime.now(UTC)
    letters = [DeadLetter.of(stage, "bad", b"x", occurred_at=now)
               for stage in ("normalise", "normalise", "score")]  # fmt: skip
    metrics.dead(letters)
    samples = scrape(port)
    assert metric(samples, "riskwire_messages_consumed_total", topic="rw.docs") == 3
    assert metric(samples, "riskwire_messages_consumed_total", topic="rw.raw.news") == 1
    assert metric(samples, "riskwire_dead_letters_total", stage="normalise") == 2
    assert metric(samples, "riskwire_dead_letters_total", stage="score") == 1


def test_probes_are_read_at_each_scrape_and_a_failing_one_is_left_out(served: Any) -> None:
    metrics, port = served
    held = {"rw.scored": 5}

    def broken() -> Any:
        raise RuntimeError("state changed under the scrape")

    metrics.probes.add("riskwire_held", "gauge", "held", ["topic"],
                       lambda: [((t,), float(n)) for t, n in held.items()])  # fmt: skip
    metrics.probes.add("riskwire_late", "counter", "late", [], lambda: [((), 2.0)])
    metrics.probes.add("riskwire_broken", "gauge", "broken", [], broken)
    assert metric(scrape(port), "riskwire_held", topic="rw.scored") == 5
    held["rw.scored"] = 7
    samples = scrape(port)
    assert metric(samples, "riskwire_held", topic="rw.scored") == 7
    assert metric(samples, "riskwire_late_total") == 2
    assert not any(name.startswith("riskwire_broken") for name, _ in samples)


def test_the_newest_event_time_only_moves_forward(served: Any) -> None:
    metrics, port = served
    day = datetime(2026, 11, 2, tzinfo=UTC)
    for hour in (3, 5, 4):  # a batch from a partition behind the others comes last
        metrics.finished("risk", day.replace(hour=hour))
    metrics.finished("score", day)
    samples = scrape(port)
    newest = "riskwire_newest_event_timestamp_seconds"
    assert metric(samples, newest, stage="risk") == day.replace(hour=5).timestamp()
    assert metric(samples, newest, stage="score") == day.timestamp()


def test_healthz_says_when_the_event_loop_has_stalled(served: Any) -> None:
    metrics, port = served
    health = f"http://127.0.0.1:{port}/healthz"
    assert httpx.get(health).text == "starting\n"  # no timer has run yet: not held against it
    metrics.beat()
    answer = httpx.get(health)
    assert (answer.status_code, answer.text) == (200, "ok\n")
    assert metric(scrape(port), "riskwire_event_loop_heartbeat_timestamp_seconds") == (
        metrics.heartbeat
    )
    metrics.heartbeat -= 45  # the loop last turned 45 s ago
    answer = httpx.get(health)
    assert answer.status_code == 503 and "event loop stalled: last turned 45 s ago" in answer.text
    assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200  # metrics still answer


def test_histograms_time_what_they_wrap(served: Any) -> None:
    metrics, port = served
    with metrics.score_seconds.time():
        pass
    with pytest.raises(ValueError), metrics.score_seconds.time():
        raise ValueError("a failed batch is timed too")
    samples = scrape(port)
    assert metric(samples, "riskwire_score_batch_seconds_count") == 2
    assert 0 < metric(samples, "riskwire_score_batch_seconds_bucket", le="+Inf") == 2


class FakeConsumer:
    def __init__(self, ends: dict[Any, int | None], committed: dict[Any, int | None]):
        self.ends, self._committed_offset = ends, committed

    def assignment(self) -> set[Any]:
        return set(self.ends)

    def highwater(self, tp: Any) -> int | None:
        return self.ends[tp]


def test_consumer_lag_is_the_high_watermark_minus_the_committed_offset() -> None:
    a, b, c, d = (TopicPartition("rw.docs", p) for p in range(4))
    # c: nothing committed (Faust keeps None, also for offset 0); d: not fetched yet
    app = SimpleNamespace(consumer=FakeConsumer({a: 120, b: 50, c: 9, d: None}, {a: 100, b: 50}))
    lags = dict(consumer_lag(app))
    assert lags == {("rw.docs", "0"): 20.0, ("rw.docs", "1"): 0.0, ("rw.docs", "2"): 9.0}


STREAM_DASHBOARD = Path(__file__).resolve().parents[2] / "grafana/dashboards/stream.json"


@pytest.mark.integration
@pytest.mark.slow
def test_the_stream_dashboard_queries_find_data_in_a_real_prometheus_scraping_riskwire(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    """The demo sample through a worker on PostgreSQL, its alerts queued for an Alertmanager that
    is down, and the API (with its dispatcher) beside it, both scraped by Prometheus: every query
    of the stream-health dashboard is valid PromQL and finds data, and the figures are riskwire's."""
    upgrade(postgres_url)
    settings = stream_settings(
        "metrics", broker.bootstrap, postgres_url, tmp_path,
        ensemble_members="finlex:1", score_batch_wait_s=0.2, reorder_idle_s=1,
        metrics_port=free_port(), metrics_address="127.0.0.1",
        alertmanager_url=f"http://127.0.0.1:{free_port()}", delivery_max_attempts=2,
        delivery_backoff_s=0.1, delivery_backoff_cap_s=0.2, delivery_poll_s=0.1,
    )  # fmt: skip
    with session_factory(make_engine(postgres_url)).begin() as session:  # a polled feed's health
        now = datetime.now(UTC)
        wire = Health("wire", "news", "https://x/rss", 60, 600, started_at=now,
                      last_item_at=now, consecutive_errors=1)  # fmt: skip
        store_health(session, [wire.row(now)])
    items = list(JsonlSource(SAMPLE).read())
    expected = expected_outcome(items)
    api_port = free_port()
    targets = [f"127.0.0.1:{settings.metrics_port}", f"127.0.0.1:{api_port}"]
    with prometheus(targets, tmp_path / "prometheus") as url:
        worker = spawn_worker(settings, tmp_path / "worker.log")
        with open(tmp_path / "api.log", "wb") as log:
            api = subprocess.Popen(
                [sys.executable, "-m", "riskwire", "api", "--port", str(api_port)],
                env={**os.environ, **settings.as_env()}, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            with RawProducer(broker.bootstrap, settings.topics) as producer:
                producer.publish(items)
            stored = 'sum(riskwire_documents_total{stage="score", outcome="stored"})'
            given_up = 'sum(riskwire_delivery_attempts_total{outcome="dead"})'
            deadline = time.monotonic() + 120
            while True:
                found = [query(url, stored), query(url, given_up)]
                if all(found) and float(found[0][0]["value"][1]) >= len(expected.document_ids):
                    if float(found[1][0]["value"][1]) > 0:
                        break
                assert time.monotonic() < deadline, found
                assert worker.poll() is None and api.poll() is None
                time.sleep(1)
            time.sleep(3)  # a few more scrapes: every rate has two samples in its window
            dashboard = json.loads(STREAM_DASHBOARD.read_text())
            for panel in dashboard["panels"]:
                for target in panel["targets"]:
                    expr = target["expr"].replace("$__rate_interval", "1m")
                    assert query(url, expr), (panel["title"], expr)
            assert float(query(url, stored)[0]["value"][1]) == len(expected.document_ids)
            health = httpx.get(f"http://127.0.0.1:{settings.metrics_port}/healthz")
            assert (health.status_code, health.text) == (200, "ok\n")
            # the worker's own: lines the file source could not read were the producer's
            unreadable = sum(isinstance(item, DeadLetter) for item in items)
            dead = query(url, "sum(riskwire_dead_letters_total)")
            assert float(dead[0]["value"][1]) == expected.dead_letters - unreadable > 0
            feed = query(url, 'riskwire_feed_status{source="wire", status="ok"}')
            assert [float(f["value"][1]) for f in feed] == [1.0]
            alerts = float(query(url, "sum(riskwire_alerts_total)")[0]["value"][1])
            queued = 'sum(riskwire_delivery_attempts_total{target="alertmanager"})'
            assert 0 < float(query(url, queued)[0]["value"][1]) <= 2 * alerts  # two tries each
        finally:
            api.terminate()
            api.wait(15)
            assert stop_worker(worker) == 0
    for log_file in ("api.log", "worker.log"):
        text = (tmp_path / log_file).read_text(errors="replace")
        assert "Traceback" not in text, text[-3000:]
