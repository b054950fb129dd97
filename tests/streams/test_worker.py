"""The whole worker against the real broker and a real database (SQLite and PostgreSQL).

Good and malformed records go in twice (a redelivery); every good record must be stored exactly once
with its score and votes, every bad one must reach the dead-letter topic with a reason, and the
negative burst must raise its alert, stored and on the alerts topic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from ingest import JsonlSource, RawProducer
from riskwire.broker import EmbeddedBroker, free_port
from riskwire.demo import SAMPLE, expected_outcome
from riskwire.records import SCORE_BATCH, Alert, DeadLetter, Score, decode_batch
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import make_engine, repository, session_factory, upgrade
from storage.tables import (
    AlertRow,
    DeadLetterRow,
    DocumentRow,
    DocumentTickerRow,
    ModelVersionRow,
    ScoreRow,
    TickerSentimentRow,
    VoteRow,
)
from streams.watermarks import is_marker
from tests.kafka_helpers import read_topic, stream_settings, wait_drained
from tests.metrics_helpers import metric, scrape

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BAD_REASONS = {
    "b1": "payload has no title or text",
    "b2": "not ISO-8601",
    "b3": "after fetch time",
    "b4": "tickers must be a list of strings",
    "b5": "kind 'fax' is not news or social",
    "b6": "not valid JSON",
}


@pytest.fixture
def pipeline_settings(database_url: str, broker: EmbeddedBroker, tmp_path: Path) -> Settings:
    url = database_url
    upgrade(url)
    return stream_settings(
        "test", broker.bootstrap, url, tmp_path,
        score_batch_wait_s=0.2, dedupe_cache_size=0,  # let duplicates reach the database
    )  # fmt: skip


@pytest.fixture
def worker(pipeline_settings: Settings, tmp_path: Path) -> Iterator[None]:
    process = spawn_worker(pipeline_settings, tmp_path / "worker.log")
    yield
    code = stop_worker(process)
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert "Traceback" not in log, log[-3000:]


def test_every_good_record_is_stored_once_and_every_bad_one_is_dead_lettered(
    pipeline_settings: Settings, worker: None, fixtures_dir: Path
) -> None:
    settings = pipeline_settings
    feed = fixtures_dir / "pipeline.jsonl"
    expected = expected_outcome(JsonlSource(feed).read())
    assert len(expected.document_ids) == 12 and expected.dead_letters == 6
    bootstrap, topics = settings.kafka_bootstrap or "", settings.topics
    items = list(JsonlSource(feed).read())
    with RawProducer(bootstrap, topics) as producer:
        for _ in range(2):  # the second pass redelivers every message, byte for byte
            counts = producer.publish(items)
            assert (counts.raw, counts.dead) == (17, 2)

    wait_drained(
        bootstrap,
        settings.consumer_group,
        [topics.raw_news, topics.raw_social, topics.docs, topics.scored, topics.deadletter],
    )

    engine = make_engine(settings.resolved_database_url)
    with session_factory(engine)() as session:
        ids = set(session.scalars(select(DocumentRow.id)))
        assert ids == expected.document_ids
        scored = session.execute(
            select(ScoreRow.document_id, func.count()).group_by(ScoreRow.document_id)
        ).all()
        assert {d: n for d, n in scored} == {d: 1 for d in ids}
        # every document has one vote per member of the ensemble that scored it, each member once
        votes = session.execute(
            select(VoteRow.document_id, func.count(), func.count(VoteRow.member.distinct()))
            .group_by(VoteRow.document_id)
        ).all()  # fmt: skip
        assert {d for d, _, _ in votes} == ids
        # the shipped news and social ensembles have five members each
        assert {n for _, n, _ in votes} == {5} and all(n == m for _, n, m in votes)
        fused = {
            d: (label, score)
            for d, label, score in session.execute(
                select(ScoreRow.document_id, ScoreRow.label, ScoreRow.score)
            )
        }
        mentions = session.scalar(select(func.count()).select_from(DocumentTickerRow))
        assert mentions == 12  # 11 linked documents, one of them naming two tickers
        assert session.scalar(select(func.count()).select_from(TickerSentimentRow)) == mentions
        stored_letters = session.scalars(select(DeadLetterRow)).all()
        versions = set(session.scalars(select(ModelVersionRow.version)))
        used = set(session.scalars(select(ScoreRow.model_version))) | set(
            session.scalars(select(VoteRow.model_version))
        )
        assert used and used <= versions  # every version that scored is in the registry
        alerts = session.scalars(select(AlertRow)).all()
        # the API's evidence: each document with the score its group counted and the votes of
        # that score's members, found through the registry the worker wrote
        evidence = repository.evidence_documents(session, alerts[0]) if alerts else []
    engine.dispose()
    assert evidence and all(d["found"] and d["score"] is not None for d in evidence)
    assert all(len(d["votes"]) == 5 for d in evidence)

    # the scored topic carries each mention's fused score, without the votes (they are stored)
    on_scored = [
        score
        for m in read_topic(bootstrap, topics.scored)
        if not is_marker(m.value)
        for score in decode_batch(m.value, Score, SCORE_BATCH)[0]
    ]
    assert on_scored and {s.document_id for s in on_scored} <= ids  # linked ones (11 of 12)
    assert all(s.votes == () for s in on_scored)
    # (a document scored again after a redelivery, in another batch, may differ in the last bits)
    assert [s.label for s in on_scored] == [fused[s.document_id][0] for s in on_scored]
    assert [s.score for s in on_scored] == pytest.approx(
        [fused[s.document_id][1] for s in on_scored], abs=1e-6
    )

    letters = [DeadLetter.from_json(m.value) for m in read_topic(bootstrap, topics.deadletter)]
    for item, reason in BAD_REASONS.items():
        matching = [d for d in letters if f'"{item}"' in d.payload]
        assert matching, f"{item} is not in the dead-letter topic"
        assert all(reason in d.reason for d in matching), (item, [d.reason for d in matching])
    assert {d.stage for d in letters} == {"ingest", "normalise"}
    assert len(stored_letters) == 6  # twice on the topic, once in the table

    assert [(a.ticker, a.rule, a.state) for a in alerts] == [("DOOM", "negative_surge", "firing")]
    assert set(alerts[0].evidence) <= expected.document_ids and alerts[0].evidence
    on_topic = [Alert.from_json(m.value) for m in read_topic(bootstrap, topics.alerts)]
    assert {(a.id, a.ticker) for a in on_topic} == {(alerts[0].id, "DOOM")}
    assert json.loads(on_topic[0].to_json())["schema"] == "alert/1"


class SampleRun:
    """The demo sample published to a worker on SQLite (batches of 16), for the tests that kill
    part of a worker part of the way through and check that nothing is lost or stored twice."""

    def __init__(self, broker: EmbeddedBroker, url: str, tmp_path: Path, prefix: str) -> None:
        upgrade(url)
        self.broker = broker
        self.settings = stream_settings(
            prefix, broker.bootstrap, url, tmp_path, score_batch_size=16, score_batch_wait_s=0.2,
            metrics_port=free_port(), metrics_address="127.0.0.1",
        )  # fmt: skip
        self.items = list(JsonlSource(SAMPLE).read())
        self.document_ids = expected_outcome(self.items).document_ids
        self.engine = make_engine(url)
        self.sessions = session_factory(self.engine)

    def publish(self) -> None:
        with RawProducer(self.broker.bootstrap, self.settings.topics) as producer:
            producer.publish(self.items)

    def stored(self) -> int:
        with self.sessions() as session:
            return int(session.scalar(select(func.count()).select_from(DocumentRow)) or 0)

    def wait_part_way(self, worker: subprocess.Popen[bytes], deadline: float) -> None:
        while self.stored() < 40:
            assert time.monotonic() < deadline and worker.poll() is None, "no progress"
            time.sleep(0.05)

    def drain(self) -> None:
        topics = self.settings.topics
        wait_drained(self.broker.bootstrap, self.settings.consumer_group,
                     [topics.raw_news, topics.raw_social, topics.docs, topics.scored,
                      topics.deadletter], timeout=150)  # fmt: skip

    def registered(self, version: str) -> bool:
        with self.sessions() as session:
            return session.get(ModelVersionRow, version) is not None

    def assert_everything_stored_once(self) -> None:
        """Every sample document stored, scored once, its mentions' risk rows there; the
        sample's four bad records dead-lettered and nothing else."""
        with self.sessions() as session:
            assert set(session.scalars(select(DocumentRow.id))) == self.document_ids
            per_doc = session.execute(
                select(ScoreRow.document_id, func.count()).group_by(ScoreRow.document_id)
            ).all()
            assert sorted({n for _, n in per_doc}) == [1]
            assert len(per_doc) == len(self.document_ids)
            mentions = session.scalar(select(func.count()).select_from(DocumentTickerRow))
            assert session.scalar(select(func.count()).select_from(TickerSentimentRow)) == mentions
            assert session.scalar(select(func.count()).select_from(DeadLetterRow)) == 4
        self.engine.dispose()


def test_a_worker_killed_mid_stream_and_restarted_loses_nothing_and_stores_nothing_twice(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path
) -> None:
    run = SampleRun(broker, sqlite_url, tmp_path, "kill")
    first = spawn_worker(run.settings, tmp_path / "worker-1.log")
    run.publish()
    run.wait_part_way(first, time.monotonic() + 90)
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    assert run.stored() < len(run.document_ids), "the kill came too late to test anything"

    second = spawn_worker(run.settings, tmp_path / "worker-2.log")
    try:
        run.drain()
    finally:
        assert stop_worker(second) == 0
    run.assert_everything_stored_once()


def scoring_processes(worker: int) -> list[int]:
    """The worker's scoring process (its spawned children, not multiprocessing's tracker)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            cmdline = (stat.parent / "cmdline").read_bytes()
        except OSError:
            continue
        if int(fields[1]) == worker and fields[0] != "Z" and b"spawn_main" in cmdline:
            found.append(int(stat.parent.name))
    return found


def test_a_scoring_process_killed_mid_stream_is_replaced_and_nothing_is_lost(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path
) -> None:
    """The models' process dies (a crash in native code, the OOM killer): the worker goes on with
    a new one; its batches are scored again, none is dead-lettered, nothing is stored twice."""
    run = SampleRun(broker, sqlite_url, tmp_path, "child")
    log_file = tmp_path / "worker.log"
    worker = spawn_worker(run.settings, log_file)
    try:
        deadline = time.monotonic() + 90
        while not scoring_processes(worker.pid):
            assert time.monotonic() < deadline and worker.poll() is None, "no scoring process"
            time.sleep(0.1)
        [child] = scoring_processes(worker.pid)
        run.publish()
        run.wait_part_way(worker, deadline)
        os.kill(child, signal.SIGKILL)
        assert run.stored() < len(run.document_ids), "the kill came too late to test anything"
        run.drain()
        assert worker.poll() is None, "the worker went with its scoring process"
        assert scoring_processes(worker.pid) not in ([], [child])  # a new one
        assert run.settings.metrics_port is not None
        samples = scrape(run.settings.metrics_port)  # what an operator sees
        assert metric(samples, "riskwire_scoring_process_restarts_total") >= 1
        stored = metric(samples, "riskwire_documents_total", stage="score", outcome="stored")
        assert stored >= len(run.document_ids)  # batches after a restart may be stored again
        assert metric(samples, "riskwire_documents_total", stage="score", outcome="dead") == 0
    finally:
        assert stop_worker(worker) == 0
    log = log_file.read_text(errors="replace")
    assert "starting the scoring process again" in log, log[-3000:]
    run.assert_everything_stored_once()


def test_a_refit_promoted_while_the_worker_runs_scores_from_the_next_batch_without_a_restart(
    broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path
) -> None:
    """The ensemble file is replaced mid-stream (what ``labels refit --promote`` does): the worker
    loads the new models beside the running ones and scores with them from then on; every score
    names the version that made it, the new version is registered, and nothing is lost or scored
    twice on the way."""
    from models.factory import make_ensemble

    spec = tmp_path / "live.json"
    members = [{"member": "lm"}, {"member": "finvader"}]
    spec.write_text(json.dumps({"name": "live", "members": members}))
    run = SampleRun(broker, sqlite_url, tmp_path, "reload")
    run.settings = run.settings.model_copy(update={"ensemble": str(spec), "model_reload_s": 0.5})
    old = make_ensemble(run.settings).version
    half = len(run.items) // 2
    first_ids = expected_outcome(run.items[:half]).document_ids
    all_items = run.items
    worker = spawn_worker(run.settings, tmp_path / "worker.log")
    try:
        run.items = all_items[:half]
        run.publish()
        run.drain()
        assert run.stored() == len(first_ids)
        [child] = scoring_processes(worker.pid)
        spec.write_text(json.dumps({"name": "live", "members": [members[0] | {"weight": 3.0},
                                                                members[1]]}))  # fmt: skip
        new = make_ensemble(run.settings).version
        assert new != old
        deadline = time.monotonic() + 60
        while not run.registered(new):
            assert time.monotonic() < deadline and worker.poll() is None, "no reload"
            time.sleep(0.1)
        run.items = all_items[half:]
        run.publish()
        run.drain()
        assert scoring_processes(worker.pid) not in ([], [child])  # the old child has gone
        assert run.settings.metrics_port is not None
        samples = scrape(run.settings.metrics_port)
        assert metric(samples, "riskwire_model_reloads_total") == 1
        assert metric(samples, "riskwire_model_info", version=new) == 1
        assert metric(samples, "riskwire_scoring_process_restarts_total") == 0
    finally:
        assert stop_worker(worker) == 0
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert f"now scoring with {new} (was {old})" in log, log[-3000:]
    run.items = all_items
    run.assert_everything_stored_once()
    with session_factory(make_engine(sqlite_url))() as session:
        versions = dict(
            session.execute(select(ScoreRow.document_id, ScoreRow.model_version)).tuples().all()
        )
    assert {versions[d] for d in first_ids} == {old}
    assert {versions[d] for d in run.document_ids - first_ids} == {new}
