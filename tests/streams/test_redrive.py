"""Where a dead letter goes back to (``streams.pipeline.redrive``), and whether its payload can."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import select

from riskwire.broker import EmbeddedBroker
from riskwire.records import MARKET, MAX_DEAD_PAYLOAD, DeadLetter, Kind, RawRecord
from riskwire.settings import Topics, load_settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, session_factory, upgrade
from storage.deadletters import Selection, count, find, fold_reason
from storage.repository import insert_dead_letters
from storage.tables import ScoreRow
from streams.pipeline import normalise
from streams.pipeline.redrive import Refusal, Route, route
from tests.factories import make_document, make_score
from tests.kafka_helpers import stream_settings
from tests.riskwire.test_cli import riskwire

NOW = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)
TOPICS = Topics("desk")


def letter(
    stage: str, payload: bytes | str, topic: str | None = None, key: str | None = "k"
) -> DeadLetter:
    return DeadLetter.of(stage, "refused", payload, occurred_at=NOW, topic=topic, key=key)


def raw(kind: str = "news") -> bytes:
    return RawRecord(
        source="wire", kind=Kind(kind), fetched_at=NOW, payload={"title": "Acme cuts outlook"}
    ).to_json()


def score(group: str) -> bytes:
    return make_score(document_id="d" * 32, ticker=group).to_json()


def test_a_raw_record_goes_back_to_the_raw_topic_it_came_from_with_its_key() -> None:
    sent = route(letter("normalise", raw("news"), TOPICS.raw_social, "wire:1"), TOPICS)
    assert sent == Route(TOPICS.raw_social, b"wire:1", raw("news"))


def test_a_raw_record_with_no_topic_of_this_deployment_goes_to_its_kinds_raw_topic() -> None:
    assert route(letter("ingest", raw("social"), "other.raw.news"), TOPICS) == Route(
        TOPICS.raw_social, b"k", raw("social")
    )
    unknown = json.dumps({"schema": "raw/1", "kind": "radio"})
    refused = route(letter("normalise", unknown, None), TOPICS)
    assert isinstance(refused, Refusal) and "kind 'radio'" in refused.reason


def test_a_document_goes_back_to_docs_to_be_scored_again() -> None:
    doc = make_document().to_json()
    assert route(letter("score", doc, None, "d1"), TOPICS) == Route(TOPICS.docs, b"d1", doc)
    assert route(letter("persist", doc, None, "d1"), TOPICS) == Route(TOPICS.docs, b"d1", doc)


def test_a_score_goes_to_its_groups_topic_keyed_by_the_group() -> None:
    """Keyed by the group, Kafka's partitioner puts it where scoring put the group's scores."""
    assert route(letter("risk", score("ACME"), None, "x"), TOPICS) == Route(
        TOPICS.scored, b"ACME", score("ACME")
    )
    for group in (MARKET, "sector:energy"):
        sent = route(letter("risk", score(group), None, group), TOPICS)
        assert isinstance(sent, Route) and (sent.topic, sent.key) == (TOPICS.groups, group.encode())


def test_bytes_that_did_not_decode_go_back_to_the_input_topic_they_came_from_as_they_were() -> None:
    for topic in (TOPICS.raw_news, TOPICS.docs, TOPICS.scored, TOPICS.groups):
        sent = route(letter("normalise", b'{"schema": "raw/1", ', topic), TOPICS)
        assert sent == Route(topic, b"k", b'{"schema": "raw/1", ')
    assert route(letter("normalise", b"", TOPICS.raw_news, None), TOPICS) == Route(
        TOPICS.raw_news, None, b""
    )


@pytest.mark.parametrize(
    ("stage", "payload", "topic", "says"),
    [
        ("late", score("ACME"), None, "stored already"),
        ("normalise", b'{"title": "\xff\xfe"}', "desk.raw.news", "not the original bytes"),
        ("normalise", b"x" * (MAX_DEAD_PAYLOAD + 1), "desk.raw.news", "not the original bytes"),
        ("ingest", b"<rss><item>", None, "never on a topic the stream reads"),
        ("deadletter", b"garbage", "desk.deadletter", "never on a topic the stream reads"),
        ("normalise", b"not json", "other.raw.news", "never on a topic the stream reads"),
    ],
)
def test_letters_that_cannot_go_back_are_refused_with_the_reason(
    stage: str, payload: bytes, topic: str | None, says: str
) -> None:
    refused = route(letter(stage, payload, topic), TOPICS)
    assert isinstance(refused, Refusal) and says in refused.reason


def test_a_payload_is_exact_only_when_it_is_the_original_bytes_whole() -> None:
    assert letter("normalise", b'{"a": "caf\xc3\xa9"}').payload_exact
    assert letter("normalise", "text as given").payload_exact
    invalid = letter("normalise", b'{"a": "\xff"}')
    assert not invalid.payload_exact and invalid.payload == '{"a": "\\xff"}'
    cut = letter("normalise", b"y" * (MAX_DEAD_PAYLOAD + 10))
    assert not cut.payload_exact and "truncated" in cut.payload
    assert letter("normalise", b"y" * MAX_DEAD_PAYLOAD).payload_exact
    # the flag travels with the record, and letters written before it was added read as exact
    assert DeadLetter.from_json(invalid.to_json()) == invalid
    older = json.loads(letter("normalise", b"{}").to_json())
    del older["payload_exact"]
    assert DeadLetter.from_json(json.dumps(older)).payload_exact


def test_reasons_fold_their_particulars_so_one_cause_counts_once() -> None:
    assert fold_reason("record is 1,048,700 bytes; the limit is 900,000") == fold_reason(
        "record is 2,000,000 bytes; the limit is 900,000"
    )
    assert fold_reason("schema 'raw/9' is not 'raw/1'") == fold_reason(
        "schema 'raw/7' is not 'raw/1'"
    )
    assert fold_reason("storage refused: duplicate key 0123456789abcdef0123") == (
        "storage refused: duplicate key ID"
    )
    assert fold_reason("not valid JSON\nTraceback ...") == "not valid JSON"
    assert fold_reason(
        "published_at 2999-01-01T00:00:00+00:00 is after fetch time 2026-12-06 23:53:10.5Z"
    ) == ("published_at TIME is after fetch time TIME")
    assert fold_reason("published_at 'x' is not ISO-8601 or epoch seconds") == (
        "published_at '…' is not ISO-8601 or epoch seconds"
    )


def test_a_redrive_reads_letters_as_they_were_seen_when_it_began(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A letter refused again while a redrive runs is seen later than the letters still to read:
    it must not come round again in the same run (while its cause lasts, it would for ever)."""
    import riskwire.deadletters

    upgrade(sqlite_url)
    sessions = session_factory(make_engine(sqlite_url))
    first, second = (
        letter("normalise", raw(), TOPICS.raw_news, f"k{n}").model_copy(
            update={"occurred_at": NOW + timedelta(minutes=n)}
        )
        for n in range(2)
    )
    with sessions.begin() as session:
        insert_dead_letters(session, [first, second])

    def refused_again(done: int) -> None:  # the worker refuses the first letter again, now
        if done == 1:
            with sessions.begin() as session:
                again = first.model_copy(update={"occurred_at": datetime.now(UTC)})
                insert_dead_letters(session, [again])

    monkeypatch.setattr(riskwire.deadletters, "BATCH", 1)
    settings = load_settings(database_url=sqlite_url, data_dir=tmp_path, topic_prefix="desk")
    report = riskwire.deadletters.redrive(
        sessions, settings, Selection(), dry_run=True, progress=refused_again
    )
    assert (report.selected, report.sent) == (2, {TOPICS.raw_news: 2})


def test_a_letter_the_broker_did_not_take_is_reported_and_left_dead(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Only sends the broker acknowledged mark a letter redriven (a unit test of the bookkeeping:
    the producer answers one send with an error; the real broker is in the test below)."""
    from kafka.errors import KafkaTimeoutError
    from kafka.producer.future import FutureProduceResult, FutureRecordMetadata

    import riskwire.deadletters

    upgrade(sqlite_url)
    sessions = session_factory(make_engine(sqlite_url))
    letters = [letter("normalise", raw(), TOPICS.raw_news, f"k{n}") for n in range(2)]
    with sessions.begin() as session:
        insert_dead_letters(session, letters)

    class Producer:
        def send(self, topic: str, key: bytes, value: bytes) -> FutureRecordMetadata:
            result = FutureProduceResult(None)
            future = FutureRecordMetadata(result, 0, -1, None, len(key), len(value), -1)
            if key == b"k0":
                future.failure(KafkaTimeoutError("no leader for the partition"))
            else:
                future.success(None)
            return future

        def flush(self) -> None: ...

        def close(self) -> None: ...

    monkeypatch.setattr(riskwire.deadletters, "_producer", lambda _settings: Producer())
    settings = load_settings(database_url=sqlite_url, data_dir=tmp_path, topic_prefix="desk")
    report = riskwire.deadletters.redrive(sessions, settings, Selection())
    assert report.sent == {TOPICS.raw_news: 1}
    assert report.failed == {"KafkaTimeoutError: no leader for the partition": 1}
    with sessions() as session:
        assert [r.id for r in find(session, Selection(statuses=("dead",)))] == [letters[0].id]


# --- against the real broker, a worker and PostgreSQL ------------------------------------------


@pytest.mark.integration
@pytest.mark.slow
def test_letters_sent_back_are_processed_again_and_one_refused_again_shows_as_failed_again(
    broker: EmbeddedBroker, postgres_url: str, tmp_path: Path
) -> None:
    upgrade(postgres_url)
    settings = stream_settings(
        "redrive", broker.bootstrap, postgres_url, tmp_path, ensemble_members="finlex:1",
        score_batch_wait_s=0.2, reorder_idle_s=1,
    )  # fmt: skip
    topics, now = settings.topics, datetime.now(UTC).replace(microsecond=0)

    def raw_record(marker: str) -> RawRecord:
        return RawRecord(source="rd-feed", kind=Kind.NEWS, fetched_at=now, payload={
            "id": marker, "title": f"{marker}: Acme cuts its outlook", "tickers": ["ACME"],
            "published_at": (now - timedelta(minutes=5)).isoformat()})  # fmt: skip

    # letters an earlier worker stored: refused by a bug since fixed, or by a database that was down
    lost_raw, lost_doc = raw_record("RD-raw"), normalise(raw_record("RD-doc"))
    bad = b'{"schema": "raw/1", "RD-bad": '
    letters = [
        DeadLetter.of("normalise", "a bug", lost_raw.to_json(), occurred_at=now,
                      topic=topics.raw_news, key="rd-feed:RD-raw"),
        DeadLetter.of("persist", "storage refused: server closed the connection",
                      lost_doc.to_json(), occurred_at=now, key=lost_doc.id),
        DeadLetter.of("normalise", "not valid JSON", bad, occurred_at=now, topic=topics.raw_news,
                      key="rd-feed:RD-bad"),
        DeadLetter.of("late", "late: ...", make_score(ticker="ACME").to_json(), occurred_at=now,
                      key="ACME"),
    ]  # fmt: skip
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        insert_dead_letters(session, letters)
    env = settings.as_env()

    unselected = riskwire("deadletters", "redrive", env=env)
    assert unselected.returncode == 2 and "say which letters" in unselected.stdout
    dry = riskwire("deadletters", "redrive", "--all", "--dry-run", "--json", env=env)
    assert json.loads(dry.stdout)["sent_total"] == 3, dry.stdout + dry.stderr
    with sessions() as session:
        assert count(session, Selection(statuses=("dead",))) == 4  # a dry run marks nothing

    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        sent = riskwire("deadletters", "redrive", "--all", "--json", env=env)
        report = json.loads(sent.stdout)
        assert report["sent"] == {topics.raw_news: 2, topics.docs: 1}, sent.stdout + sent.stderr
        assert list(report["refused"].values()) == [1]  # the late one
        wanted = {normalise(lost_raw).id, lost_doc.id}
        deadline = time.monotonic() + 90
        while True:
            with sessions() as session:
                scored = set(session.scalars(
                    select(ScoreRow.document_id).where(ScoreRow.document_id.in_(wanted))
                ))  # fmt: skip
                again = find(session, Selection(statuses=("failed-again",)))
            if scored == wanted and len(again) == 1:
                break
            assert time.monotonic() < deadline, (scored, again)
            assert worker.poll() is None, "the worker died"
            time.sleep(0.5)
        assert again[0].id == letters[2].id and again[0].redrives == 1

        listed = json.loads(riskwire("deadletters", "list", "--json", env=env).stdout)
        assert listed["total"] == 4
        status = {d["id"]: d["status"] for d in listed["letters"]}
        assert [status[d.id] for d in letters] == ["redriven", "redriven", "failed-again", "dead"]
        shown = riskwire("deadletters", "show", letters[2].id[:10], "--json", env=env)
        assert json.loads(shown.stdout)["payload"].encode() == bad
        # by default only what is still dead goes: the one refused again (the late one refused)
        second = json.loads(riskwire("deadletters", "redrive", "--all", "--json", env=env).stdout)
        assert (second["selected"], second["sent"]) == (2, {topics.raw_news: 1})
    finally:
        assert stop_worker(worker) == 0
        engine.dispose()
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
