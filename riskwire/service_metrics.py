"""Prometheus metrics of the API process and the delivery dispatcher (a worker's are in
``streams/metrics.py``): requests by route and status, open event streams, the dispatcher's
attempts and send times, and, read from the database at each scrape, the outbox (pending and dead
deliveries, the oldest pending one's age), the polled feeds' health and the replay jobs by status.

``riskwire api`` serves them at ``GET /metrics``; ``riskwire deliver`` on ``RISKWIRE_METRICS_PORT``.
Several API replicas read the same database: aggregate its figures with ``max``, not ``sum``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.replay import CANCELLED, CANCELLING, DONE, FAILED, RUNNING
from riskwire.replay import PENDING as JOB_PENDING
from storage.delivery import ALERTMANAGER, DEAD, GRAFANA, PENDING, WEBHOOK
from storage.tables import DeliveryRow, FeedHealthRow, ReplayRunRow
from streams.metrics import serve, stop

log = logging.getLogger(__name__)

SEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FEED_STATES = ("ok", "quiet", "silent", "failing")
TARGETS = (WEBHOOK, GRAFANA, ALERTMANAGER)
OUTCOMES = ("delivered", "retry", "dead")
JOB_STATES = (JOB_PENDING, RUNNING, CANCELLING, CANCELLED, DONE, FAILED)


class ServiceMetrics:
    """The metrics of one API or dispatcher process, in a registry of their own."""

    def __init__(self, sessions: sessionmaker[Session] | None = None) -> None:
        self.registry = CollectorRegistry()
        self.attempts = Counter(
            "riskwire_delivery_attempts", "Delivery attempts by destination and outcome "
            "(delivered, retry: failed and tried again later, dead: given up)",
            ["target", "outcome"], registry=self.registry,
        )  # fmt: skip
        self.send_seconds = Histogram(
            "riskwire_delivery_send_seconds", "Time to send one delivery, by destination",
            ["target"], buckets=SEND_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.requests = Counter(
            "riskwire_http_requests", "API requests by method, route (its template, or "
            "'unmatched') and status code", ["method", "route", "status"], registry=self.registry,
        )  # fmt: skip
        self.request_seconds = Histogram(
            "riskwire_http_request_seconds", "API requests, from arrival to the response's start "
            "(an event stream's first bytes), by route", ["route"], buckets=SEND_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.sse_clients = Gauge(
            "riskwire_sse_clients", "Server-sent event streams open now (alerts and "
            "subscriptions)", registry=self.registry,
        )  # fmt: skip
        self.sse_events = Counter(
            "riskwire_sse_events_sent", "Alert events sent on server-sent event streams",
            registry=self.registry,
        )  # fmt: skip
        for target in TARGETS:  # every series from the start: a rate needs its zero
            self.send_seconds.labels(target)
            for outcome in OUTCOMES:
                self.attempts.labels(target, outcome)
        if sessions is not None:
            self.registry.register(DatabaseState(sessions))
        self._server: Any = None

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` (and ``/healthz``) on ``port``, as a worker does."""
        self._server = serve(self.registry, port, address)

    def stop(self) -> None:
        stop(self._server)
        self._server = None


class DatabaseState(Collector):
    """What the database says at scrape time. A failed read leaves its metrics out of that scrape
    (and logs why) rather than fail the scrape: Prometheus's ``absent()`` then tells."""

    def __init__(self, sessions: sessionmaker[Session]) -> None:
        self.sessions = sessions

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            with self.sessions() as session:
                families = list(self._read(session, datetime.now(UTC)))
        except Exception as exc:
            log.warning("metrics: could not read the database: %s", exc)
            return
        yield from families

    def _read(self, session: Session, now: datetime) -> Iterator[GaugeMetricFamily]:
        # pending and dead only: both are found through the (status, next_attempt_at) index, and
        # delivered rows, which grow without end, are counted by the dispatcher as it sends
        pending = GaugeMetricFamily(
            "riskwire_deliveries_pending", "Deliveries waiting to be sent (or retried), by "
            "destination", labels=["target"],
        )  # fmt: skip
        oldest = GaugeMetricFamily(
            "riskwire_delivery_oldest_pending_seconds", "Age of the oldest delivery still "
            "pending, by destination (0: none pending)", labels=["target"],
        )  # fmt: skip
        dead = GaugeMetricFamily(
            "riskwire_deliveries_dead", "Deliveries given up on (`riskwire deliveries --status "
            "dead` says why), by destination", labels=["target"],
        )  # fmt: skip
        rows = session.execute(
            select(DeliveryRow.target, DeliveryRow.status, func.count(),
                   func.min(DeliveryRow.created_at))
            .where(DeliveryRow.status.in_((PENDING, DEAD)))
            .group_by(DeliveryRow.target, DeliveryRow.status)
        ).all()  # fmt: skip
        found = {(target, status): (count, first) for target, status, count, first in rows}
        for target in sorted(set(TARGETS) | {t for t, _ in found}):  # zeros too: none is news
            count, first = found.get((target, PENDING), (0, None))
            pending.add_metric([target], count)
            age = 0.0 if first is None else max(0.0, (now - first).total_seconds())
            oldest.add_metric([target], age)
            dead.add_metric([target], found.get((target, DEAD), (0, None))[0])
        yield from (pending, oldest, dead)

        state = GaugeMetricFamily(
            "riskwire_feed_status", "A polled feed's health: 1 for its current status (ok, "
            "quiet, silent, failing), 0 for the others", labels=["source", "kind", "status"],
        )  # fmt: skip
        item_age = GaugeMetricFamily(
            "riskwire_feed_last_item_age_seconds", "Time since a polled feed last brought an "
            "item", labels=["source"],
        )  # fmt: skip
        errors = GaugeMetricFamily(
            "riskwire_feed_consecutive_errors", "A polled feed's failed polls in a row",
            labels=["source"],
        )  # fmt: skip
        # the poller writes a feed's health at each poll: a last poll far behind the feed's
        # interval means the poller (`riskwire ingest run`) stopped, and its statuses went stale
        poll_age = GaugeMetricFamily(
            "riskwire_feed_last_poll_age_seconds", "Time since a polled feed was last polled",
            labels=["source"],
        )  # fmt: skip
        interval = GaugeMetricFamily(
            "riskwire_feed_expected_interval_seconds", "How often a polled feed is meant to be "
            "polled", labels=["source"],
        )  # fmt: skip
        for feed in session.scalars(select(FeedHealthRow)):
            for name in FEED_STATES:
                state.add_metric([feed.source, feed.kind, name], float(feed.status == name))
            if feed.last_item_at is not None:
                age = (now - feed.last_item_at).total_seconds()
                item_age.add_metric([feed.source], max(0.0, age))
            if feed.last_poll_at is not None:
                age = (now - feed.last_poll_at).total_seconds()
                poll_age.add_metric([feed.source], max(0.0, age))
            errors.add_metric([feed.source], feed.consecutive_errors)
            interval.add_metric([feed.source], feed.expected_interval_s)
        yield from (state, item_age, errors, poll_age, interval)

        jobs = GaugeMetricFamily(
            "riskwire_replay_jobs", "Replay and backfill jobs by status", labels=["status"]
        )
        query = select(ReplayRunRow.status, func.count()).group_by(ReplayRunRow.status)
        counts = dict(session.execute(query).tuples().all())
        for status in sorted(set(JOB_STATES) | set(counts)):
            jobs.add_metric([status], counts.get(status, 0))
        yield jobs
