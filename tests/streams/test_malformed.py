"""A corpus of malformed input against the real broker, a worker and PostgreSQL: every bad record
reaches the dead-letter topic with its reason, and the worker keeps running and storing good ones.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from kafka import KafkaProducer
from sqlalchemy import func, select

from ingest import RawProducer
from riskwire.broker import EmbeddedBroker, free_port
from riskwire.records import DeadLetter, Kind, RawRecord
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.tables import DeadLetterRow, DocumentRow
from tests.kafka_helpers import read_topic, stream_settings
from tests.metrics_helpers import metric, scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]
NOW = datetime.now(UTC).replace(microsecond=0)


def raw(marker: str, **payload: object) -> dict[str, object]:
    body = {"title": f"{marker} Acme cuts outlook", "tickers": ["ACME"],
            "published_at": (NOW - timedelta(hours=1)).isoformat(), **payload}  # fmt: skip
    return {"schema": "raw/1", "source": "bad-feed", "kind": "news",
            "fetched_at": NOW.isoformat(), "payload": body}  # fmt: skip


def encoded(value: object) -> bytes:
    return json.dumps(value).encode()


# (marker in the payload, topic suffix, bytes, stage, what the reason says)
CASES = [
    ("M-json", "raw.news", b'{"schema": "raw/1", "M-json": ', "normalise", "not valid JSON"),
    ("M-utf8", "raw.news", b'{"M-utf8": "\xff\xfe\xfa"}', "normalise", "not valid JSON"),
    ("M-array", "raw.news", b'["M-array", 1, 2]', "normalise", "expected a JSON object"),
    ("M-schema", "raw.news", encoded({**raw("M-schema"), "schema": "raw/9"}), "normalise",
     "schema 'raw/9' is not 'raw/1'"),
    ("M-missing", "raw.news", encoded({"schema": "raw/1", "source": "M-missing", "kind": "news"}),
     "normalise", "fetched_at"),
    ("M-kind", "raw.news", encoded({**raw("M-kind"), "kind": 7}), "normalise", "kind"),
    ("M-tickers", "raw.news", encoded(raw("M-tickers", tickers=5)), "normalise",
     "tickers must be a list of strings"),
    ("M-naive", "raw.news", encoded(raw("M-naive", published_at="2026-11-02 10:00:00")),
     "normalise", "no UTC offset"),
    ("M-future", "raw.news", encoded(raw("M-future", published_at="2999-01-01T00:00:00Z")),
     "normalise", "after fetch time"),
    ("M-long", "raw.news", encoded(raw("M-long", text="loss " * 40_000)), "normalise",
     "longer than 100000 characters"),
    ("M-doc", "docs", encoded({"schema": "document/7", "id": "M-doc"}), "score",
     "schema 'document/7' is not 'document/1'"),
    ("M-score", "scored", b"M-score: not a score", "risk", "not valid JSON"),
    # a NUL byte, which PostgreSQL cannot keep in text: the letter is stored with it escaped
    ("M-nul", "raw.news", b'{"M-nul": "\x00\x01 binary"', "normalise", "not valid JSON"),
]  # fmt: skip


@pytest.fixture
def settings(broker: EmbeddedBroker, postgres_url: str, tmp_path: Path) -> Settings:
    upgrade(postgres_url)
    return stream_settings(
        "bad", broker.bootstrap, postgres_url, tmp_path, ensemble_members="finlex:1",
        score_batch_wait_s=0.2, reorder_idle_s=1, metrics_port=free_port(),
        metrics_address="127.0.0.1",
    )  # fmt: skip


@pytest.fixture
def worker(settings: Settings, tmp_path: Path) -> Iterator[object]:
    process = spawn_worker(settings, tmp_path / "worker.log")
    yield process
    assert stop_worker(process) == 0
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]


def test_every_malformed_record_is_dead_lettered_with_its_reason_and_the_worker_goes_on(
    settings: Settings, worker: object
) -> None:
    bootstrap, topics = settings.kafka_bootstrap or "", settings.topics
    huge = RawRecord(source="bad-feed", kind=Kind.NEWS, fetched_at=NOW,
                     payload={"title": "M-huge", "text": "x" * 10_000_000, "id": "M-huge"})  # fmt: skip
    good = [
        RawRecord(source="good-feed", kind=Kind.NEWS, fetched_at=NOW, payload={
            "id": f"g{i}", "title": f"Acme beats estimates again, quarter {i}", "tickers": ["ACME"],
            "published_at": (NOW - timedelta(minutes=10 * i)).isoformat()})
        for i in range(3)
    ]  # fmt: skip
    # valid JSON whose text holds NUL, other control characters and half an emoji (a lone
    # surrogate): cleaned and stored, not dead-lettered (a NUL once failed the whole batch on
    # PostgreSQL; the surrogate was dead-lettered as an unexpected error)
    good += [
        RawRecord(source="good\x00feed", kind=Kind.NEWS, fetched_at=NOW, payload={
            "id": f"c{i}", "title": f"Acme{c}beats estimates{c}again, {i}", "tickers": ["ACME"],
            "url": f"https://example.com/a{c}b", "published_at": NOW.isoformat()})
        for i, c in enumerate(("\x00", "\x1b[31m", "\ud83d"))
    ]  # fmt: skip
    with RawProducer(bootstrap, topics) as producer:
        counts = producer.publish([huge])
        assert (counts.raw, counts.dead) == (0, 1)  # refused at the source: Kafka would refuse it
    producer = KafkaProducer(bootstrap_servers=bootstrap)
    for _, suffix, value, _, _ in CASES:
        producer.send(f"{topics.prefix}.{suffix}", value=value)
    producer.flush()
    producer.close()
    with RawProducer(bootstrap, topics) as good_producer:
        good_producer.publish(good)

    engine = make_engine(settings.resolved_database_url)
    sessions = session_factory(engine)
    deadline = time.monotonic() + 90
    while True:
        with sessions() as session:
            stored = session.scalar(select(func.count()).select_from(DocumentRow))
            kept = session.scalars(select(DeadLetterRow.payload)).all()
        letters = [DeadLetter.from_json(m.value) for m in read_topic(bootstrap, topics.deadletter)]
        found = {c[0] for c in CASES if any(c[0] in d.payload for d in letters)}
        in_table = {c[0] for c in CASES if any(c[0] in payload for payload in kept)}
        if stored == len(good) and len(found) == len(in_table) == len(CASES):
            break
        missing = sorted({c[0] for c in CASES} - (found & in_table))
        assert time.monotonic() < deadline, (stored, missing)
        assert worker.poll() is None, "the worker died"  # type: ignore[attr-defined]
        time.sleep(0.5)
    with sessions() as session:
        cleaned = dict(session.execute(select(DocumentRow.title, DocumentRow.source)).all())
    engine.dispose()
    assert cleaned["Acme beats estimates again, 0"] == "good feed"
    assert "Acme [31mbeats estimates [31magain, 1" in cleaned  # the escape character gone
    assert "Acme\ufffdbeats estimates\ufffdagain, 2" in cleaned
    # every letter is in the table too, for operators to query (waited for above)
    assert any("M-nul" in p and "\\x00" in p for p in kept)

    for marker, _, _, stage, reason in CASES:
        (letter,) = [d for d in letters if marker in d.payload]
        assert letter.stage == stage and reason in letter.reason, (marker, letter.reason)
    (too_big,) = [d for d in letters if "M-huge" in d.payload]
    assert too_big.stage == "ingest" and "the limit is" in too_big.reason
    assert len(too_big.payload) < 70_000 and "truncated" in too_big.payload

    # the worker's metrics say the same (the ingest refusal was the producer's, not the worker's)
    assert settings.metrics_port is not None
    samples = scrape(settings.metrics_port)
    for stage in ("normalise", "score", "risk"):
        expected = sum(1 for c in CASES if c[3] == stage)
        assert metric(samples, "riskwire_dead_letters_total", stage=stage) == expected, stage
    assert metric(samples, "riskwire_dead_letters_total", stage="ingest") == 0
    normalise_dead = sum(1 for c in CASES if c[3] == "normalise")
    assert metric(samples, "riskwire_documents_total", stage="normalise", outcome="dead") == (
        normalise_dead
    )
    assert metric(samples, "riskwire_documents_total", stage="normalise", outcome="new") == len(
        good
    )
    assert metric(samples, "riskwire_documents_total", stage="score", outcome="stored") == len(good)
    assert metric(samples, "riskwire_messages_consumed_total", topic=topics.deadletter) >= len(
        CASES
    )
