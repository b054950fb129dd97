"""The agents' batch functions, without a broker: nothing escapes, failures become dead letters."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
import pytest
from sqlalchemy import create_engine, select, text
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from models.ensemble import Ensemble
from riskwire.records import DeadLetter, Document, Kind, RawRecord, Score
from riskwire.settings import load_settings
from storage import upgrade
from storage.fences import Fenced, acquire, check
from storage.repository import upsert_documents
from storage.tables import DocumentRow, DocumentTickerRow, ModelVersionRow
from streams.context import (
    WorkerContext,
    _reconnect_after,
    _transient,
    decode_events,
    decode_pairs,
    storage_refused,
)
from streams.normalising import normalise_event
from streams.pipeline import NegativeSurgeRule, RiskEngine
from streams.risk import apply_scores
from streams.scoring import score_batch
from tests.factories import make_document, make_score
from tests.models.conftest import FixedMember

NOW = datetime(2026, 11, 29, tzinfo=UTC)


@dataclass
class FakeMessage:
    topic: str


@dataclass
class FakeEvent:
    """The three attributes of a Faust event the flows read."""

    key: bytes | None
    value: bytes
    message: FakeMessage


def event(value: bytes, key: bytes | None = b"k") -> FakeEvent:
    return FakeEvent(key, value, FakeMessage("riskwire.docs"))


def test_normalise_event_returns_a_document_or_a_dead_letter_never_raises() -> None:
    good = RawRecord(
        source="s",
        kind=Kind.NEWS,
        fetched_at=NOW,
        payload={"title": "$ACME up", "published_at": "2026-11-02T09:00:00Z"},
    )
    assert isinstance(normalise_event(b"k", good.to_json(), "raw", NOW), Document)
    for value, reason in [
        (b"\xff\x00", "not valid JSON"),
        (b"{}", "schema None"),
        (make_score().to_json(), "schema 'score/1'"),
    ]:
        letter = normalise_event(b"k", value, "raw", NOW)
        assert isinstance(letter, DeadLetter)
        assert letter.stage == "normalise" and reason in letter.reason
        assert letter.topic == "raw" and letter.key == "k"


def test_decode_events_splits_records_from_dead_letters() -> None:
    doc = make_document()
    docs, dead = decode_events([event(doc.to_json()), event(b"garbage")], Document, "score", NOW)
    assert docs == [doc]
    assert [(d.stage, d.payload, d.topic) for d in dead] == [("score", "garbage", "riskwire.docs")]


class BrokenEngine(RiskEngine):
    def process(self, score: Score):  # type: ignore[no-untyped-def]
        if score.ticker == "BUG":
            raise ZeroDivisionError("division by zero")
        return super().process(score)


def test_a_failing_score_costs_one_dead_letter_not_the_batch() -> None:
    scores = [make_score(ticker="ACME"), make_score(ticker="BUG"), make_score(ticker="ACME")]
    updates, dead = apply_scores(BrokenEngine([NegativeSurgeRule()]), scores, NOW)
    assert [s.ticker for s, _ in updates] == ["ACME", "ACME"]
    assert all(u.row is not None and u.alerts == [] for _, u in updates)
    assert len(dead) == 1 and "ZeroDivisionError" in dead[0].reason and dead[0].key == "BUG"


class ExplodingMember(FixedMember):
    def _forward(self, batch: list[str]) -> np.ndarray:
        if any("boom" in text for text in batch):
            raise ValueError("cannot score this")
        return super()._forward(batch)


@pytest.fixture
def context(tmp_path: Path) -> WorkerContext:
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9")
    upgrade(settings.resolved_database_url)
    ensemble = Ensemble([ExplodingMember("x", [0.2, 0.6, 0.2], batch_size=8)])
    return WorkerContext(settings, ensemble_factory=lambda: ensemble)


def test_a_document_that_breaks_the_model_is_dead_lettered_alone(context: WorkerContext) -> None:
    docs = [make_document(text="fine"), make_document(text="boom"), make_document(text="ok")]
    scores, dead = asyncio.run(score_batch(context, docs, NOW))
    assert [s.document_id for s in scores] == [docs[0].id, docs[2].id]
    assert [d.key for d in dead] == [docs[1].id]
    assert "ValueError: cannot score this" in dead[0].reason


def test_the_writer_isolates_rows_the_database_refuses(context: WorkerContext) -> None:
    stored = make_document()
    orphan = make_document()  # its ticker row points at a document that is never written

    def write(session: Session, docs: Sequence[Document]) -> None:
        for doc in docs:
            if doc is stored:
                upsert_documents(session, [doc])
            else:
                session.add(
                    DocumentTickerRow(
                        document_id=doc.id,
                        ticker="ACME",
                        relevance=1.0,
                        published_at=doc.published_at,
                    )
                )

    refused = asyncio.run(context.write([stored, orphan], write))
    assert [item for item, _ in refused] == [orphan]
    dead = [storage_refused(exc, d.to_json(), d.id, NOW) for d, exc in refused]
    assert [d.key for d in dead] == [orphan.id]
    assert dead[0].stage == "persist" and "storage refused" in dead[0].reason
    assert "FOREIGN KEY" in dead[0].reason
    with context.sessions() as session:
        assert session.scalars(select(DocumentRow.id)).all() == [stored.id]
    context.close()


def test_a_model_that_cannot_load_dead_letters_the_batch_with_the_reason(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9")

    def broken() -> Ensemble:
        raise OSError("weights not found")

    context = WorkerContext(settings, ensemble_factory=broken)
    docs = [make_document(), make_document()]
    scores, dead = asyncio.run(score_batch(context, docs, NOW))
    assert scores == []
    assert [d.key for d in dead] == [d.id for d in docs]
    assert all("OSError: weights not found" in d.reason for d in dead)
    context.close()


@pytest.mark.integration
def test_the_writer_waits_for_an_unavailable_database_instead_of_losing_the_batch(
    postgres_admin_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    name = f"riskwire_late_{uuid.uuid4().hex[:10]}"
    url = make_url(postgres_admin_url).set(database=name).render_as_string(hide_password=False)
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    context = WorkerContext(load_settings(database_url=url, kafka_bootstrap="127.0.0.1:9"))
    doc = make_document()

    async def write_while_the_database_appears() -> list[object]:
        task = asyncio.create_task(context.write([doc], upsert_documents))
        await asyncio.sleep(1.5)
        assert not task.done()  # waiting, not failing and not dead-lettering
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        upgrade(url)
        return await asyncio.wait_for(task, 60)

    try:
        with caplog.at_level(logging.WARNING, logger="streams.context"):
            assert asyncio.run(write_while_the_database_appears()) == []
        assert "database unavailable" in caplog.text
        with context.sessions() as session:
            assert session.scalars(select(DocumentRow.id)).all() == [doc.id]
    finally:
        context.close()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.mark.parametrize(
    ("choice", "in_database"), [("auto", False), ("memory", False), ("database", True)]
)
def test_the_story_index_is_where_the_settings_say(
    tmp_path: Path, choice: str, in_database: bool
) -> None:
    """On SQLite (one worker, one writer) ``auto`` keeps stories in the worker; asked for, the
    database index works there too, and both put a copy in its original's story."""
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9", story_index=choice)
    upgrade(settings.resolved_database_url)
    context = WorkerContext(settings)
    assert (context.local_stories is None) is in_database
    text = "Acme Corp shares slump 12% after the drugmaker's late-stage trial misses its goal"
    copy = make_document(text="(Reuters) - " + text, title="(Reuters) - " + text)
    first = make_document(
        text=text, title=text, published_at=copy.published_at - timedelta(hours=1)
    )
    told = asyncio.run(context.assign_stories([copy, first]))  # in event-time order, whatever came
    assert [(t.story_id, t.copy) for t in told] == [(first.id, 1), (first.id, 0)]
    context.close()


class Ackable:
    """A Faust message as the risk stage uses it: partition, offset, held and acknowledged."""

    def __init__(self, topic: str, partition: int, offset: int) -> None:
        self.topic, self.partition, self.offset = topic, partition, offset
        self.tp = (topic, partition)
        self.refs = 0

    def incref(self) -> None:
        self.refs += 1


@dataclass
class StageEvent:
    key: bytes | None
    value: bytes
    message: Ackable
    acked: bool = False

    def ack(self) -> None:
        self.acked = True


class Sent:
    def __init__(self) -> None:
        self.values: list[bytes] = []

    async def send(self, key: bytes | None = None, value: bytes = b"", **_: object) -> None:
        self.values.append(value)


def test_a_score_batch_message_is_finished_only_when_all_its_scores_are_released(
    context: WorkerContext,
) -> None:
    from riskwire.records import Watermark, encode_scores
    from streams.risk import RiskStage

    stage = RiskStage(context, context.risk, "riskwire.scored")
    stage.sources = 1  # one docs partition: its markers alone release
    stage.alerts, stage.dead = Sent(), Sent()  # type: ignore[assignment]
    t0 = NOW - timedelta(days=1)
    early, late = (make_score(published_at=t0 + timedelta(minutes=m)) for m in (1, 30))
    body = encode_scores([early, late])
    broken = body.replace(b'"label":"negative"', b'"label":"awful"', 1)  # the first score only
    batch = StageEvent(b"ACME", broken, Ackable("riskwire.scored", 0, 0))

    def marker(offset: int, minutes: int) -> StageEvent:
        mark = Watermark(source_partition=0, event_time=t0 + timedelta(minutes=minutes))
        return StageEvent(None, mark.to_json(), Ackable("riskwire.scored", 0, offset))

    first = marker(1, 10)  # vouches for up to t0 + 10 min (less the grace)
    asyncio.run(stage.take([batch, first]))
    # the broken score is dead-lettered with its reason; the good one is still held
    assert len(stage.dead.values) == 1  # type: ignore[attr-defined]
    letter = DeadLetter.from_json(stage.dead.values[0])  # type: ignore[attr-defined]
    assert "label" in letter.reason and early.document_id in letter.payload
    assert not batch.acked and not first.acked  # the marker after it waits for it, in order
    second = marker(2, 24 * 60)
    asyncio.run(stage.take([second]))
    assert stage.released == 1 and batch.acked and first.acked and second.acked


def test_held_scores_wait_out_a_silent_broker_but_not_silent_upstream(
    context: WorkerContext, caplog: pytest.LogCaptureFixture
) -> None:
    """Nothing coming, not even markers. While the broker does not answer, the earlier documents
    may still be upstream: what is held stays held, and a warning names the docs partitions
    waited for. Once it has answered for as long, upstream has nothing more (or its markers went
    missing): what is held is released."""
    from riskwire.records import Watermark, encode_scores
    from streams.risk import RiskStage

    stage = RiskStage(context, context.risk, "riskwire.scored")
    stage.sources = 2
    stage.alerts, stage.dead = Sent(), Sent()  # type: ignore[assignment]
    t0 = NOW - timedelta(days=1)
    mark = Watermark(source_partition=0, event_time=t0 + timedelta(minutes=60))
    held = StageEvent(b"ACME", encode_scores([make_score(published_at=t0 + timedelta(minutes=5))]),
                      Ackable("riskwire.scored", 0, 0))  # fmt: skip
    marker = StageEvent(None, mark.to_json(), Ackable("riskwire.scored", 0, 1))
    asyncio.run(stage.take([held, marker]))  # docs partition 1 has said nothing yet
    assert stage.released == 0 and stage.stalled_s() < 1
    assert stage.waiting_for() == {0: [1]}

    stage.last_input -= 3600  # an hour without input, the broker not answering just now
    with caplog.at_level(logging.WARNING, logger="streams.risk"):
        asyncio.run(stage.flush_idle(answering=False))
        assert not stage.report_stall()  # once a minute at most
    assert "waiting for the markers of docs partitions {0: [1]}" in caplog.text
    assert stage.released == 0 and not held.acked and stage.stalled_s() >= 3600
    asyncio.run(stage.flush_idle(answering=True))  # answering again, but not for long yet
    assert stage.released == 0
    stage.unanswered_at -= stage.stall_after  # answering all along since
    asyncio.run(stage.flush_idle(answering=True))
    assert stage.released == 1 and held.acked and marker.acked and stage.stalled_s() == 0


def test_a_partition_sought_back_starts_over_and_owes_only_what_will_not_come_again(
    context: WorkerContext,
) -> None:
    from riskwire.records import encode_scores
    from streams.risk import RiskStage

    t0 = NOW - timedelta(days=1)

    def scores_at(stage: RiskStage, offsets: range) -> None:
        """Messages of partition 0 at ``offsets``, each a score no marker has released yet."""
        events = [
            StageEvent(b"ACME", encode_scores([make_score(published_at=t0)]),
                       Ackable("riskwire.scored", 0, o))
            for o in offsets
        ]  # fmt: skip
        asyncio.run(stage.take(events))

    tp = ("riskwire.scored", 0)
    # Faust sought back to its committed offset, at or before the first held score: all of them
    # come again from there, so nothing more is owed
    stage = RiskStage(context, context.risk, "riskwire.scored")
    scores_at(stage, range(10, 20))
    scores_at(stage, range(10, 12))
    assert tp not in stage.positions.next
    assert [e[0].message.offset for e in stage.acks[0]] == [10, 11]  # held: only what came again
    # sought back past the first held score: 10..13 would not come again, so they are owed
    stage = RiskStage(context, context.risk, "riskwire.scored")
    scores_at(stage, range(10, 20))
    scores_at(stage, range(14, 16))
    assert stage.positions.next[tp] == 10


def test_documents_travel_in_messages_under_the_size_limit_and_a_bad_one_is_told_apart() -> None:
    from riskwire.records import DOCUMENT_BATCH
    from streams.normalising import MESSAGE_BYTES, batch_messages

    docs = [make_document(text=f"note {i} " + "x" * 60_000) for i in range(20)]
    messages = batch_messages([d.to_json() for d in docs], most=64)
    assert 1 < len(messages) < len(docs)
    assert all(len(m) <= MESSAGE_BYTES + 200_000 for m in messages)
    assert len(batch_messages([make_document().to_json()] * 10, most=4)) == 3  # 4 + 4 + 2
    alone = batch_messages([make_document(text="y" * 100_000).to_json()], most=64)
    assert len(alone) == 1  # a document larger than the rest of a message still travels
    broken = messages[0].replace(b'"kind":"news"', b'"kind":"rumour"', 1)
    events = [event(broken), *(event(m) for m in messages[1:]), event(docs[0].to_json())]
    pairs, dead = decode_pairs(events, Document, "score", NOW, batch=DOCUMENT_BATCH)
    assert [d for _, d in pairs] == docs[1:] + docs[:1]  # in order; a single document as before
    assert len(dead) == 1 and "kind" in dead[0].reason and docs[0].id in dead[0].payload
    (bad,) = decode_pairs([event(b"{nope")], Document, "score", NOW, batch=DOCUMENT_BATCH)[1]
    assert "not valid JSON" in bad.reason


def reloading_context(
    tmp_path: Path, ensemble: Path, in_a_process: bool
) -> tuple[WorkerContext, str]:
    """A worker context on ``ensemble`` (a SQLite database in ``tmp_path``) with its models
    loaded, and their version; a first reload finds nothing changed."""
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9",
                             ensemble=str(ensemble), scoring_process=in_a_process)  # fmt: skip
    upgrade(settings.resolved_database_url)
    context = WorkerContext(settings)
    try:
        version = context.load_ensemble().version
        assert asyncio.run(context.reload_models()) is None
    except BaseException:
        context.close()
        raise
    return context, version


@pytest.mark.parametrize("in_a_process", [False, True])
def test_models_changed_on_disk_are_reloaded_without_a_restart(
    tmp_path: Path, in_a_process: bool
) -> None:
    """In the scoring process, or without one (a thread of the worker): a reload scores with the
    new models from the next batch and registers them; unchanged files, or the same version,
    change nothing, and models that cannot load leave the running ones scoring."""
    spec = tmp_path / "live.json"
    spec.write_text(json.dumps({"name": "live", "members": [{"member": "lm"}]}))
    context, before = reloading_context(tmp_path, spec, in_a_process)
    try:
        spec.write_text(json.dumps({"name": "live", "members": [{"member": "lm"},
                                                                {"member": "finvader"}]}))  # fmt: skip
        after = asyncio.run(context.reload_models())
        assert after is not None and after != before
        (score,) = asyncio.run(context.score([make_document(text="Profit warning; shares fall")]))
        assert score.model_version == after and len(score.votes) == 2
        with context.sessions() as session:
            assert session.get(ModelVersionRow, after) is not None
        os.utime(spec, ns=(1, 1))  # touched, not changed: built again, the same version
        assert asyncio.run(context.reload_models()) is None
        spec.write_text("{half a file")
        assert asyncio.run(context.reload_models()) is None
        (score,) = asyncio.run(context.score([make_document(text="Shares rise")]))
        assert score.model_version == after
    finally:
        context.close()


def test_batches_in_flight_when_scoring_stops_are_finished_or_given_up_with_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The scoring agent's batches still in flight when its stream ends: finished ones are
    waited for; a failed one, or one still running at the timeout, is logged (not left for
    asyncio to report as never retrieved) and, being unacknowledged, read again on the next start;
    a stop that cancels the wait cancels them, so none runs on against a stopped producer."""
    from collections import deque

    from streams.scoring import settle

    async def batch(seconds: float, fail: bool = False) -> None:
        await asyncio.sleep(seconds)
        if fail:
            raise RuntimeError("producer gone")

    async def run(*specs: tuple[float, bool], timeout: float = 5.0) -> list[asyncio.Task[None]]:
        tasks = [asyncio.ensure_future(batch(s, f)) for s, f in specs]
        inflight: deque[asyncio.Future[None]] = deque(tasks)
        await settle(inflight, timeout)
        assert not inflight
        return tasks

    with caplog.at_level(logging.INFO, logger="streams.scoring"):
        tasks = asyncio.run(run((0.01, False), (0.05, False)))
        assert all(t.done() and t.exception() is None for t in tasks)
        assert "the 2 batch(es) in flight were finished" in caplog.text
        caplog.clear()
        tasks = asyncio.run(run((0.01, False), (0.02, True), (10, False), timeout=0.3))
        assert tasks[2].cancelled()
        assert "2 of 3 batch(es) in flight when scoring stopped were not finished" in caplog.text
        assert "producer gone" in caplog.text
        caplog.clear()

        async def stopped() -> list[asyncio.Task[None]]:
            tasks = [asyncio.ensure_future(batch(10))]
            waiting = asyncio.ensure_future(settle(deque(tasks), 30))
            await asyncio.sleep(0.05)
            waiting.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiting
            await asyncio.sleep(0)
            return tasks

        (task,) = asyncio.run(stopped())
        assert task.cancelled()
        assert "scoring stopped with 1 batch(es) in flight" in caplog.text


@pytest.mark.integration
def test_a_worker_paused_mid_transaction_lets_its_successor_in_and_is_refused_when_it_wakes(
    postgres_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The worker's connections carry the idle-transaction limit: a transaction it leaves open
    (here: paused 3 s inside it, against a limit of 1 s) is ended by PostgreSQL, the successor's
    acquisition goes through meanwhile, and the woken worker starts its transaction again and is
    refused by the fence, its write not stored."""
    upgrade(postgres_url)
    settings = load_settings(
        database_url=postgres_url, kafka_bootstrap="127.0.0.1:9", database_idle_transaction_s=1.0
    )
    context = WorkerContext(settings)
    successor = WorkerContext(
        load_settings(database_url=postgres_url, kafka_bootstrap="127.0.0.1:9")
    )
    tokens: dict[int, int] = {}
    context.transact([0], lambda s, ps: tokens.update(acquire(s, "t.scored", ps)))
    attempts: list[float] = []
    took: list[float] = []

    def successor_takes_over() -> None:
        started = time.monotonic()
        successor.transact([0], lambda s, ps: acquire(s, "t.scored", ps))
        took.append(time.monotonic() - started)

    def write(session: Session, docs: Sequence[Document]) -> None:
        attempts.append(time.monotonic())
        check(session, "t.scored", tokens)
        upsert_documents(session, docs)
        if len(attempts) == 1:  # paused in the middle, past the session: another takes over
            thread = threading.Thread(target=successor_takes_over)
            thread.start()
            time.sleep(3)
            thread.join(10)

    with caplog.at_level(logging.WARNING, logger="streams.context"), pytest.raises(Fenced):
        context.transact([make_document()], write)
    assert len(attempts) == 2  # ended by the server, started again, refused
    assert took and took[0] < 2.5, took  # the successor did not wait out the pause
    assert "idle-in-transaction" in caplog.text
    with context.sessions() as session:
        assert session.scalars(select(DocumentRow.id)).all() == []
    context.close()
    successor.close()


@pytest.mark.parametrize(
    ("orig", "waited", "reconnect"),
    [
        (psycopg.errors.DiskFull("could not extend file: No space left on device"), True, True),
        (psycopg.errors.ReadOnlySqlTransaction("cannot execute INSERT"), True, True),
        (psycopg.errors.AdminShutdown("terminating connection"), True, True),
        (psycopg.errors.QueryCanceled("canceling statement due to statement timeout"), True, True),
        (psycopg.errors.TooManyConnections("sorry, too many clients already"), True, True),
        (psycopg.errors.DeadlockDetected("deadlock detected"), True, False),
        (psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"), True, False),
        (
            psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
            False,
            False,
        ),
        (psycopg.errors.StringDataRightTruncation("value too long"), False, False),
        # a message that happens to say "timeout" or "connection" is the row's fault all the same
        (psycopg.errors.CheckViolation("check constraint connection_timeout_check"), False, False),
        (psycopg.OperationalError("connection failed: Connection refused"), True, False),
    ],
)
def test_a_database_that_cannot_take_writes_now_is_waited_for_and_a_refused_row_is_not(
    orig: Exception, waited: bool, reconnect: bool
) -> None:
    exc = DBAPIError("INSERT ...", {}, orig)
    assert _transient(exc) is waited
    assert _reconnect_after(exc) is reconnect


def test_a_full_sqlite_database_is_waited_for_not_dead_lettered(tmp_path: Path) -> None:
    """SQLite answers ``database or disk is full`` (SQLITE_FULL) when its file cannot grow: here
    capped by ``max_page_count``. The batch waits, unacknowledged, until there is room again;
    it used to be refused record by record, into the dead-letter topic."""
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9")
    upgrade(settings.resolved_database_url)
    context = WorkerContext(settings)
    room = {"pages": 0}

    def cap(dbapi_connection: Any, _record: Any) -> None:
        if room["pages"]:
            dbapi_connection.execute(f"PRAGMA max_page_count = {room['pages']}")

    sqlalchemy_event.listen(context.engine, "connect", cap)
    with context.sessions() as session:
        room["pages"] = int(session.execute(text("PRAGMA page_count")).scalar_one())
    context.engine.dispose()  # connections from now on: the file cannot grow
    docs = [make_document(text=f"Acme Corp beats estimates, quarter {n} " + "x" * 3000)
            for n in range(40)]  # fmt: skip

    async def write_while_the_disk_is_full() -> list[object]:
        task = asyncio.create_task(context.write(docs, upsert_documents))
        await asyncio.sleep(1.5)
        assert not task.done()  # waiting, not failing and not dead-lettering
        room["pages"] = 0  # room again
        context.engine.dispose()
        return await asyncio.wait_for(task, 60)

    try:
        assert asyncio.run(write_while_the_disk_is_full()) == []
        with context.sessions() as session:
            assert len(session.scalars(select(DocumentRow.id)).all()) == len(docs)
    finally:
        context.close()


@pytest.mark.integration
def test_a_read_only_database_is_waited_for_and_written_once_a_primary_answers(
    postgres_admin_url: str, postgres_url: str
) -> None:
    """After a failover the worker's pooled connections can lead to a standby, which refuses
    writes (SQLSTATE 25006) as long as the connection lives. Here the database is set read-only
    (``default_transaction_read_only``, which holds for connections made meanwhile): the batch
    waits instead of being dead-lettered, and once writes are allowed again it is stored, on
    connections made afresh."""
    upgrade(postgres_url)
    name = make_url(postgres_url).database
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    context = WorkerContext(load_settings(database_url=postgres_url, kafka_bootstrap="127.0.0.1:9"))
    doc = make_document()

    def read_only(on: bool) -> None:
        with admin.connect() as conn:
            change = (
                "SET default_transaction_read_only = on"
                if on
                else "RESET default_transaction_read_only"
            )
            conn.execute(text(f'ALTER DATABASE "{name}" {change}'))

    async def write_while_read_only() -> list[object]:
        task = asyncio.create_task(context.write([doc], upsert_documents))
        await asyncio.sleep(1.5)
        assert not task.done()  # waiting, not failing and not dead-lettering
        read_only(False)
        return await asyncio.wait_for(task, 60)

    read_only(True)
    context.engine.dispose()  # as a failover would: what the pool reaches now is read-only
    try:
        assert asyncio.run(write_while_read_only()) == []
        with context.sessions() as session:
            assert session.scalars(select(DocumentRow.id)).all() == [doc.id]
    finally:
        read_only(False)
        context.close()
        admin.dispose()


@pytest.mark.integration
def test_a_row_refused_inside_a_copy_is_isolated_and_a_connection_lost_there_is_retried(
    postgres_admin_url: str, postgres_url: str
) -> None:
    """Batches of 16 rows or more are written with COPY on the driver's own cursor, whose errors
    SQLAlchemy never sees: they used to escape as they were (psycopg's), so a row PostgreSQL
    refuses failed the whole batch instead of being isolated. A connection lost in the middle is
    waited out, as one lost anywhere else."""
    upgrade(postgres_url)
    context = WorkerContext(load_settings(database_url=postgres_url, kafka_bootstrap="127.0.0.1:9"))
    admin = create_engine(postgres_admin_url, isolation_level="AUTOCOMMIT")
    docs = [make_document(text=f"Acme beats estimates, quarter {n}") for n in range(20)]
    bad = make_document(text="Acme \x00 misses")  # NUL: normalise cleans it out; here it got in
    try:
        refused = asyncio.run(context.write([*docs, bad], upsert_documents))
        assert [(d.id, type(e).__name__) for d, e in refused] == [(bad.id, "DataError")]
        assert "NUL" in str(refused[0][1])

        more = [make_document(text=f"Acme misses estimates, quarter {n}") for n in range(20)]
        ended: list[int] = []

        def write_after_the_connection_is_lost(session: Session, batch: Sequence[Document]) -> None:
            pid = session.execute(text("SELECT pg_backend_pid()")).scalar_one()
            if not ended:  # the first attempt's connection is ended under it
                with admin.connect() as conn:
                    conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
                ended.append(pid)
            upsert_documents(session, batch)

        assert asyncio.run(context.write(more, write_after_the_connection_is_lost)) == []
        with context.sessions() as session:
            stored = set(session.scalars(select(DocumentRow.id)))
        assert stored == {d.id for d in [*docs, *more]}
    finally:
        context.close()
        admin.dispose()


def test_text_sqlite_cannot_encode_is_refused_alone_not_the_batch(tmp_path: Path) -> None:
    """SQLite's fast insert runs on the driver's cursor too: a lone surrogate (text no encoding
    takes) is one refused row, as it is through SQLAlchemy, not an error out of the batch."""
    settings = load_settings(data_dir=tmp_path, kafka_bootstrap="127.0.0.1:9")
    upgrade(settings.resolved_database_url)
    context = WorkerContext(settings)
    docs = [make_document(text=f"Acme beats estimates, quarter {n}") for n in range(5)]
    bad = make_document(text="Acme \ud83d")
    try:
        refused = asyncio.run(context.write([*docs, bad], upsert_documents))
        assert [d.id for d, _ in refused] == [bad.id]
        assert "surrogates not allowed" in str(refused[0][1])
        with context.sessions() as session:
            assert set(session.scalars(select(DocumentRow.id))) == {d.id for d in docs}
    finally:
        context.close()


def test_sqlite_is_waited_for_by_its_result_code_not_by_words_in_the_message() -> None:
    connection = sqlite3.connect(":memory:")
    connection.execute("CREATE TABLE t (connection_timeout TEXT PRIMARY KEY)")
    connection.execute("INSERT INTO t VALUES ('a')")
    with pytest.raises(sqlite3.IntegrityError) as refused:
        connection.execute("INSERT INTO t VALUES ('a')")  # names a column with both words
    # "UNIQUE constraint failed: t.connection_timeout": refused, not waited for forever
    assert not _transient(DBAPIError("INSERT ...", {}, refused.value))
    connection.close()
