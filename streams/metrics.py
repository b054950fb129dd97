"""A worker's Prometheus metrics: what it took, stored, scored and dead-lettered, how long the
models and the database took, how far behind it is, and whether it is waiting for the database.

Served at ``/metrics`` on ``RISKWIRE_METRICS_PORT`` (unset: not served; the counts are kept
either way), with ``/healthz`` beside it: 503 once the worker's event loop has not turned for
30 s (the server is a thread of its own, so it answers even then). Counts go up once per batch and
label, and the document-age histogram takes a microsecond or two per document, so the stream pays
next to nothing for them; what is read from the worker's state (consumer lag, held scores, late
documents, the scoring process) is read when Prometheus scrapes.

Consumer lag is Kafka's definition: a partition's high watermark (from the latest fetch) minus the
group's committed offset. On the embedded broker the high watermark is the base offset of the
newest batch plus one (``../shared/KAFKA_NOTES.md``), so there it can read low; on Apache Kafka it
is exact.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    make_wsgi_app,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.exposition import ThreadingWSGIServer
from prometheus_client.registry import Collector

log = logging.getLogger(__name__)
disable_created_metrics()  # no ``_created`` series beside every counter and histogram

# seconds: a batch of 64 documents scores in 0.1-1 s on 2 CPU cores, much less on a GPU
SCORE_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
DB_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 120.0)
AGE_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)
STALLED_AFTER_S = 30.0  # a worker whose event loop has not turned for this long is unhealthy
# the series known from the start, exported at zero: a rate (and an alert on it) needs the zero
KNOWN_DOCUMENTS = (("normalise", "new"), ("normalise", "duplicate"), ("normalise", "dead"),
                   ("score", "stored"), ("score", "dead"))  # fmt: skip
KNOWN_DEAD_LETTER_STAGES = ("normalise", "score", "risk", "late", "persist")


class WorkerMetrics:
    """The metrics of one worker process, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.messages = Counter(
            "riskwire_messages_consumed", "Kafka messages a stage took, by topic (markers and "
            "batch messages count once each)", ["topic"], registry=r,
        )  # fmt: skip
        self.documents = Counter(
            "riskwire_documents", "Documents through a stage, by outcome: normalise (new, "
            "duplicate, dead), score (stored, dead)", ["stage", "outcome"], registry=r,
        )  # fmt: skip
        self.dead_letters = Counter(
            "riskwire_dead_letters", "Records sent to the dead-letter topic, by the stage that "
            "refused them", ["stage"], registry=r,
        )  # fmt: skip
        self.scores_released = Counter(
            "riskwire_scores_released", "Scores a risk stage (risk: tickers; group-risk: sectors "
            "and the market) released to its engine in event-time order", ["stage"], registry=r,
        )  # fmt: skip
        self.alerts = Counter(
            "riskwire_alerts", "Alert events the risk stages stored and sent (firing, resolved)",
            ["rule", "severity", "state"], registry=r,
        )  # fmt: skip
        self.score_seconds = Histogram(
            "riskwire_score_batch_seconds", "From handing a batch to the ensemble to its scores "
            "(a wait behind the batches the scoring process is busy with included)",
            buckets=SCORE_BUCKETS, registry=r,
        )  # fmt: skip
        self.document_age = Histogram(
            "riskwire_document_age_seconds", "From a document's fetch (ingest) to its score being "
            "stored", buckets=AGE_BUCKETS, registry=r,
        )  # fmt: skip
        self.db_seconds = Histogram(
            "riskwire_db_transaction_seconds", "Database transactions, from begin to commit (the "
            "waits of retries included)", buckets=DB_BUCKETS, registry=r,
        )  # fmt: skip
        self.model_reloads = Counter(
            "riskwire_model_reloads", "Times the worker switched to changed models (a refit "
            "promoted, a new ensemble file) without a restart", registry=r,
        )  # fmt: skip
        self.db_retries = Counter(
            "riskwire_db_retries", "Transactions retried because the database was unavailable",
            registry=r,
        )  # fmt: skip
        self.db_waiting = Gauge(
            "riskwire_db_waiting", "Transactions now waiting for an unavailable database "
            "(the stream is held back meanwhile, nothing acknowledged)", registry=r,
        )  # fmt: skip
        self.newest_event = Gauge(
            "riskwire_newest_event_timestamp_seconds", "Event time (published_at) of the newest "
            "document a stage finished, as a Unix time", ["stage"], registry=r,
        )  # fmt: skip
        for stage, outcome in KNOWN_DOCUMENTS:
            self.documents.labels(stage, outcome)
        for stage in KNOWN_DEAD_LETTER_STAGES:
            self.dead_letters.labels(stage)
        self.loop_heartbeat = Gauge(
            "riskwire_event_loop_heartbeat_timestamp_seconds", "When the worker's event loop last "
            "turned (every second while it runs), as a Unix time", registry=r,
        )  # fmt: skip
        self.heartbeat: float | None = None
        self._newest: dict[str, float] = {}
        self.probes = _Probes()
        r.register(self.probes)
        self._server: Any = None

    def took(self, events: Iterable[Any]) -> None:
        """Count a batch of Kafka events by topic."""
        for topic, n in Tally(e.message.topic for e in events).items():
            self.messages.labels(topic).inc(n)

    def finished(self, stage: str, event_time: datetime) -> None:
        """``stage`` finished a document of this event time: the newest such, kept (batches from
        other partitions, or a late document, may be older)."""
        t = event_time.timestamp()
        if t > self._newest.get(stage, float("-inf")):
            self._newest[stage] = t
            self.newest_event.labels(stage).set(t)

    def dead(self, letters: Iterable[Any]) -> None:
        for stage, n in Tally(letter.stage for letter in letters).items():
            self.dead_letters.labels(stage).inc(n)

    def beat(self) -> None:
        """The event loop is turning (a timer of the worker's app calls this every second)."""
        self.heartbeat = time.time()
        self.loop_heartbeat.set(self.heartbeat)

    def health(self, now: float | None = None) -> tuple[bool, str]:
        """Whether the worker's event loop has turned lately: a loop blocked by a stuck call stops
        every stage, while this (another thread) still answers."""
        if self.heartbeat is None:
            return True, "starting"
        behind = (time.time() if now is None else now) - self.heartbeat
        if behind > STALLED_AFTER_S:
            return False, f"event loop stalled: last turned {behind:.0f} s ago"
        return True, "ok"

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Serve ``/metrics`` and ``/healthz`` on ``port`` (in a thread of this process)."""
        self._server = serve(self.registry, port, address, self.health)

    def stop(self) -> None:
        stop(self._server)
        self._server = None


def serve(
    registry: CollectorRegistry, port: int, address: str = "127.0.0.1",
    health: Callable[[], tuple[bool, str]] = lambda: (True, "ok"),
) -> Any:  # fmt: skip
    """Serve ``registry`` at ``/metrics`` and ``health()`` at ``/healthz`` (200 or 503 with its
    reason) on ``port``, from a thread of this process; returns the server, for ``stop``."""
    metrics = make_wsgi_app(registry)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        if environ.get("PATH_INFO") != "/healthz":
            return metrics(environ, start_response)  # type: ignore[no-any-return]
        ok, reason = health()
        start_response("200 OK" if ok else "503 Service Unavailable",
                       [("Content-Type", "text/plain; charset=utf-8")])  # fmt: skip
        return [reason.encode() + b"\n"]

    server = make_server(address, port, app, ThreadingWSGIServer, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("metrics on http://%s:%d/metrics (and /healthz)", address, port)
    return server


def stop(server: Any) -> None:
    if server is not None:
        server.shutdown()
        server.server_close()


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # every scrape would be logged
        pass


Reading = Iterable[tuple[tuple[str, ...], float]]


class _Probes(Collector):
    """Metrics read from the worker's state at each scrape: each is a function of no arguments
    returning (label values, value) pairs, registered by the part that owns the state."""

    def __init__(self) -> None:
        # name -> (kind, help, label names, read)
        self.probes: dict[str, tuple[str, str, list[str], Callable[[], Reading]]] = {}

    def add(
        self, name: str, kind: str, help: str, labels: list[str], read: Callable[[], Reading]
    ) -> None:
        self.probes[name] = (kind, help, labels, read)

    def collect(self) -> Iterator[Any]:
        for name, (kind, help, labels, read) in list(self.probes.items()):
            family: Any
            if kind == "counter":
                family = CounterMetricFamily(name, help, labels=labels)
            else:
                family = GaugeMetricFamily(name, help, labels=labels)
            try:
                # read in the scrape's thread: the worker's state may change meanwhile, so a
                # reading is a moment's, and a failed one is left out rather than fail the scrape
                for values, value in list(read()):
                    family.add_metric(list(values), value)
            except Exception as exc:
                log.debug("metric %s not read: %s", name, exc)
                continue
            yield family


def consumer_lag(app: Any) -> Reading:
    """Per assigned partition: its high watermark minus the group's committed offset (or minus
    the start, where nothing is committed yet)."""
    from streams.watermarks import committed_offset

    consumer = app.consumer
    for tp in list(consumer.assignment()):
        end = consumer.highwater(tp)
        if end is None:
            continue
        done = committed_offset(consumer, tp) or 0
        yield (tp.topic, str(tp.partition)), float(max(0, end - done))


METRICS = WorkerMetrics()
