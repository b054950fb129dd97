"""PostgreSQL stopped for a while in the middle of a stream (a private cluster this test starts and
stops): the worker waits with its input unacknowledged, keeps running, and once the database is
back everything is stored, once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ingest import JsonlSource, RawProducer
from riskwire.broker import EmbeddedBroker, free_port
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.tables import DeadLetterRow, DocumentRow, RiskAggregateRow, TickerSentimentRow
from tests import pg_cluster
from tests.kafka_helpers import read_topic, stream_settings, wait_drained
from tests.metrics_helpers import metric, scrape
from tests.streams.test_crash import write_corpus

pytestmark = [
    pytest.mark.integration,
    pytest.mark.slow,
    pytest.mark.skipif(not pg_cluster.available(), reason="needs the PostgreSQL server binaries"),
]
N = 3000


def test_a_database_outage_mid_stream_loses_nothing(broker: EmbeddedBroker, tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    write_corpus(corpus, N)
    with pg_cluster.private_postgres() as cluster:
        upgrade(cluster.url)
        settings = stream_settings(
            "outage", broker.bootstrap, cluster.url, tmp_path,
            ensemble_members="finlex:1", score_batch_size=64, score_batch_wait_s=0.2,
            metrics_port=free_port(), metrics_address="127.0.0.1",
        )  # fmt: skip
        port = settings.metrics_port
        assert port is not None
        engine = make_engine(cluster.url)
        sessions = session_factory(engine)

        def count(table: type) -> int:
            with sessions() as session:
                return int(session.scalar(select(func.count()).select_from(table)) or 0)

        worker = spawn_worker(settings, tmp_path / "worker.log")
        try:
            with RawProducer(broker.bootstrap, settings.topics) as producer:
                assert producer.publish(JsonlSource(corpus).read()).raw == N
            deadline = time.monotonic() + 120
            while count(TickerSentimentRow) < N * 0.2:
                assert time.monotonic() < deadline and worker.poll() is None
                time.sleep(0.2)
            cluster.stop()
            engine.dispose()
            time.sleep(12)  # the worker retries meanwhile, with its input unacknowledged
            assert worker.poll() is None, "the worker died with the database"
            waiting = scrape(port)  # what an operator sees meanwhile
            assert metric(waiting, "riskwire_db_waiting") >= 1
            assert metric(waiting, "riskwire_db_retries_total") >= 1
            cluster.start()
            t = settings.topics
            wait_drained(broker.bootstrap, settings.consumer_group,
                         [t.raw_news, t.docs, t.scored, t.groups], timeout=240)  # fmt: skip
            assert count(DocumentRow) == N and count(TickerSentimentRow) == N
            assert count(RiskAggregateRow) > 0
            assert count(DeadLetterRow) == 0
            letters = read_topic(broker.bootstrap, t.deadletter, idle_ms=500)
            assert letters == [], [m.value[:200] for m in letters]
            after = scrape(port)
            assert metric(after, "riskwire_db_waiting") == 0
            assert metric(after, "riskwire_documents_total", stage="score", outcome="stored") >= N
        finally:
            code = stop_worker(worker)
            engine.dispose()
        log = (tmp_path / "worker.log").read_text(errors="replace")
        assert code == 0, log[-3000:]
        assert "database unavailable" in log  # it noticed, and waited
