"""Parity: a period processed live through the broker and a worker, then replayed with the same
model version and rules, gives identical scores, rolling sentiment and alerts.

The live run sees the news in event-time order (one partition per topic, items published sorted by
time): that is when live and replay must agree exactly. With documents arriving out of order the
live engine fires on what it knew at the time, and the replay report's comparison shows the
difference; that case is not a parity case.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from kafka.admin import KafkaAdminClient, NewTopic
from sqlalchemy import select

from ingest import JsonlSource, RawProducer
from models.base import resolve_precision
from riskwire.broker import EmbeddedBroker
from riskwire.demo import SAMPLE
from riskwire.records import DeadLetter, Kind, RawRecord
from riskwire.replay import ReplayRunner, ReplaySpec, create_job
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.tables import ReplayRunRow, ScoreRow
from streams.pipeline import normalise
from tests.kafka_helpers import stream_settings, wait_drained
from tests.replay_helpers import alerts_of, scores_of, sentiment_of

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def news_in_event_time_order() -> list[RawRecord]:
    items = [i for i in JsonlSource(SAMPLE).read() if not isinstance(i, DeadLetter)]
    news = [i for i in items if i.kind == Kind.NEWS]
    keyed = []
    for item in news:
        try:
            doc = normalise(item)
        except Exception:
            continue
        keyed.append(((doc.published_at, doc.id), item))
    return [item for _, item in sorted(keyed, key=lambda pair: pair[0])]


def test_replaying_a_live_period_gives_identical_scores_and_alerts(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    settings = stream_settings(
        "parity", broker.bootstrap, postgres_url, tmp_path, topic_partitions=1,
        score_batch_wait_s=0.2,
    )  # fmt: skip
    items = news_in_event_time_order()
    topics = settings.topics
    # one partition per topic, created before anything is produced (auto-created ones get four)
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    admin.create_topics(
        [NewTopic(t, num_partitions=1, replication_factor=1)
         for t in (topics.raw_news, topics.docs, topics.scored, topics.alerts, topics.deadletter)]
    )  # fmt: skip
    admin.close()
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        with RawProducer(broker.bootstrap, settings.topics) as producer:
            producer.publish(items)
        wait_drained(broker.bootstrap, settings.consumer_group,
                     [topics.raw_news, topics.docs, topics.scored], timeout=150)  # fmt: skip
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]

    sessions = session_factory(make_engine(postgres_url))
    with sessions() as session:
        live_scores = scores_of(session, "live")
        live_rows = sentiment_of(session, "live")
        live_alerts = alerts_of(session, "live")
        (version,) = set(session.scalars(select(ScoreRow.model_version)))
    assert len(live_scores) > 150 and {k[1] for k in live_alerts} >= {"HLXB", "GRDN", "KSTL"}
    first = min(v[0] for v in live_rows.values())
    last = max(v[0] for v in live_rows.values())

    period = {"start": first, "end": last + timedelta(microseconds=1), "model_version": version}
    cached = create_job(sessions, settings, ReplaySpec(**period))  # type: ignore[arg-type]
    rescored = create_job(sessions, settings, ReplaySpec(**period, rescore=True))  # type: ignore[arg-type]
    runner = ReplayRunner(settings, sessions, page_size=64)  # the default ensemble, as live
    assert runner.run(cached) == "done"
    assert runner.run(rescored) == "done"

    with sessions() as session:
        # cached votes: bit-identical
        assert scores_of(session, cached) == live_scores
        assert sentiment_of(session, cached) == live_rows
        assert alerts_of(session, cached) == live_alerts
        # scored again by the same model version: the same labels and alerts, the same numbers
        # to float noise (batches are composed, so padded, differently; bf16 keeps 8 bits of
        # mantissa, so a figure moves by a few times 2**-8 = 0.004: 0.0032 seen on a Xeon with AMX)
        noise = 1e-5 if resolve_precision(settings.precision, settings.device) == "fp32" else 1e-2
        again = scores_of(session, rescored)
        assert again.keys() == live_scores.keys()
        for doc, values in live_scores.items():
            assert again[doc][:2] == values[:2]
            assert again[doc][2:] == pytest.approx(values[2:], abs=noise)
        assert alerts_of(session, rescored).keys() == live_alerts.keys()
        report = session.get(ReplayRunRow, cached).report
        assert report is not None and report["alert_counts"]["lost"] == 0
        assert report["alert_counts"]["gained"] == 0
