"""One story's copies are one story whichever worker reads them: the story index is in PostgreSQL,
not in a worker's memory. Real broker, real database, two worker processes one after the other (the
second knows nothing the first learnt, except through the database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from ingest import JsonlSource, RawProducer
from riskwire.broker import EmbeddedBroker
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.tables import DocumentRow, TickerSentimentRow
from tests.kafka_helpers import stream_settings, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

T = datetime(2026, 10, 5, 13, 0, tzinfo=UTC)
STORY = "Exxon Mobil cuts its 2027 capital budget by 15% as refining margins collapse"
COPIES = [  # (source, title): syndicated, retweeted and lightly rewritten
    ("reuters", "(Reuters) - " + STORY),
    ("stocktwits", "RT @energydesk: " + STORY),
    (
        "marketwatch",
        "Exxon Mobil cuts its 2027 capital budget by 15% as refining margins collapse.",
    ),
    ("yahoo", "Exxon Mobil cuts 2027 capital budget by 15% as refining margins collapse"),
    ("benzinga", "BREAKING: " + STORY),
]
OTHER = "Exxon Mobil opens a hydrogen plant in Baytown with 300 jobs"


def item(source: str, n: int, title: str) -> dict[str, object]:
    return {
        "kind": "news", "source": source, "id": f"{source}-{n}", "tickers": ["XOM"],
        "title": title, "published_at": (T + timedelta(minutes=n)).isoformat(),
    }  # fmt: skip


def run_worker(settings: Settings, batches: list[list[dict[str, object]]], path: Path) -> None:
    """One worker process: publish each batch of items and wait until all of it is through."""
    worker = spawn_worker(settings, path.with_suffix(".log"))
    try:
        for n, items in enumerate(batches):
            feed = path.with_name(f"{path.name}-{n}.jsonl")
            feed.write_text("".join(json.dumps(i) + "\n" for i in items), encoding="utf-8")
            with RawProducer(settings.kafka_bootstrap or "", settings.topics) as producer:
                assert producer.publish(JsonlSource(feed).read()).raw == len(items)
            t = settings.topics
            wait_drained(settings.kafka_bootstrap or "", settings.consumer_group,
                         [t.raw_news, t.docs, t.scored, t.groups], timeout=120)  # fmt: skip
    finally:
        assert stop_worker(worker) == 0
    assert "Traceback" not in path.with_suffix(".log").read_text(errors="replace")


def test_copies_read_by_another_worker_join_the_story_and_count_once(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    settings = stream_settings(
        "stories", broker.bootstrap, postgres_url, tmp_path,
        ensemble_members="finlex:1", score_batch_wait_s=0.2, reorder_idle_s=1,
    )  # fmt: skip
    # the story first, then copies (the order in which copies from different partitions are read
    # is the broker's, so the original goes first on its own)
    first = [item("wire", 0, STORY), *(item(s, i + 1, t) for i, (s, t) in enumerate(COPIES[:2]))]
    run_worker(settings, [first[:1], first[1:]], tmp_path / "worker-1")
    second = [*(item(s, i + 3, t) for i, (s, t) in enumerate(COPIES[2:])), item("wire", 9, OTHER)]
    run_worker(settings, [second], tmp_path / "worker-2")

    titles = [str(i["title"]) for i in first + second]
    sessions = session_factory(make_engine(postgres_url))
    with sessions() as session:
        rows = {r.title: r for r in session.scalars(select(DocumentRow))}
        rolling = set(session.scalars(select(TickerSentimentRow.document_id)))
    assert set(rows) == set(titles)
    original, other = rows[STORY].id, rows[OTHER].id
    assert (rows[STORY].story_id, rows[STORY].novelty) == (original, 1.0)
    # the second worker's copies continue the first worker's story and its copy count (copies
    # are numbered in the order they are read, which interleaves partitions)
    assert {rows[t].story_id for t in titles[1:-1]} == {original}
    first_two = sorted((rows[t].novelty for t in titles[1:3]), reverse=True)
    last_three = sorted((rows[t].novelty for t in titles[3:-1]), reverse=True)
    assert first_two == [0.5, 0.25] and last_three == [0.125, 0.0625, 0.03125]
    assert (rows[OTHER].story_id, rows[OTHER].novelty) == (other, 1.0)
    assert rolling == {original, other}  # six copies of one story are one piece of evidence
