"""The push endpoint against the real broker: pushed items land on the raw topics as raw records
(source, arrival time, payload as sent); what cannot be a record lands on the dead-letter topic with
its reason, and is reported in the answer."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from riskwire.api import create_api
from riskwire.broker import EmbeddedBroker, free_port
from riskwire.records import DeadLetter, RawRecord
from riskwire.settings import Settings, load_settings
from storage import delivery as store
from storage import make_engine, session_factory, upgrade
from tests.kafka_helpers import read_topic

pytestmark = pytest.mark.integration


@pytest.fixture
def push_settings(broker: EmbeddedBroker, sqlite_url: str, tmp_path: Path) -> Settings:
    upgrade(sqlite_url)
    return load_settings(
        kafka_bootstrap=broker.bootstrap, database_url=sqlite_url, data_dir=tmp_path,
        topic_prefix=f"push-{uuid.uuid4().hex[:8]}", api_token="admin", deliver_in_api=False,
    )  # fmt: skip


@pytest.fixture
def client(push_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_api(push_settings)) as test_client:
        yield test_client


def key(settings: Settings, *scopes: str) -> dict[str, str]:
    sessions = session_factory(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        token = store.create_api_key(session, "vendor", list(scopes), datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}


def test_pushed_items_land_on_the_raw_topics_and_bad_ones_are_dead_lettered(
    client: TestClient, push_settings: Settings
) -> None:
    vendor = key(push_settings, "ingest")
    items = [
        {"id": "v-1", "title": "$ACME cuts guidance", "published_at": "2026-11-02T10:00:00Z"},
        {"id": "v-2", "text": "$BETA to the moon", "kind": "social",
         "published_at": "2026-11-02T10:01:00Z"},
        ["not", "an", "object"],
        {"id": "v-4", "title": "fax", "kind": "fax"},
    ]  # fmt: skip
    answer = client.post("/ingest/acme-wire", json=items, headers=vendor)
    assert answer.status_code == 202, answer.text
    result = answer.json()
    assert result["accepted"] == 2
    assert [(r["index"], "object" in r["reason"] or "fax" in r["reason"])
            for r in result["rejected"]] == [(2, True), (3, True)]  # fmt: skip

    topics, bootstrap = push_settings.topics, push_settings.kafka_bootstrap or ""
    news = [RawRecord.from_json(m.value) for m in read_topic(bootstrap, topics.raw_news)]
    social = [RawRecord.from_json(m.value) for m in read_topic(bootstrap, topics.raw_social)]
    assert [r.payload["id"] for r in news] == ["v-1"] and [r.payload["id"] for r in social] == [
        "v-2"
    ]
    assert news[0].source == "push:acme-wire" and news[0].payload == items[0]
    letters = [DeadLetter.from_json(m.value) for m in read_topic(bootstrap, topics.deadletter)]
    assert len(letters) == 2 and all(d.stage == "ingest" for d in letters)
    # the topic's partitions interleave: in either order
    assert ["not", "an", "object"] in [json.loads(d.payload) for d in letters]


def test_ndjson_pushes_are_accepted(client: TestClient, push_settings: Settings) -> None:
    lines = "\n".join(
        json.dumps({"id": f"n-{i}", "title": f"item {i}", "published_at": "2026-11-02T10:00:00Z"})
        for i in range(3)
    )
    answer = client.post(
        "/ingest/ndwire", content=lines,
        headers={**key(push_settings, "ingest"), "Content-Type": "application/x-ndjson"},
    )  # fmt: skip
    assert answer.status_code == 202 and answer.json() == {"accepted": 3, "rejected": []}


def test_pushes_need_the_ingest_scope_and_a_sane_body(
    client: TestClient, push_settings: Settings
) -> None:
    item = {"title": "x", "published_at": "2026-11-02T10:00:00Z"}
    assert client.post("/ingest/wire", json=item).status_code == 401
    reader = key(push_settings, "alerts:read")
    assert client.post("/ingest/wire", json=item, headers=reader).status_code == 403
    vendor = key(push_settings, "ingest")
    assert client.post("/ingest/wire", content=b"{nope", headers=vendor).status_code == 400
    assert client.post("/ingest/bad name!", json=item, headers=vendor).status_code == 422
    many = [item] * 1001
    assert client.post("/ingest/wire", json=many, headers=vendor).status_code == 413


def test_without_a_broker_the_api_says_so(push_settings: Settings) -> None:
    settings = push_settings.model_copy(update={"kafka_bootstrap": None})
    with TestClient(create_api(settings)) as client:
        answer = client.post("/ingest/wire", json={"title": "x"}, headers=key(settings, "ingest"))
    assert answer.status_code == 503 and "RISKWIRE_KAFKA_BOOTSTRAP" in answer.text


def test_a_push_the_broker_does_not_take_is_answered_503_not_counted(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kafka-python's flush() returns whether or not the broker took the records: the producer
    now reads every send's outcome, so a broker gone mid-way is an error (the push is answered
    503, for the pusher to send again; the feed runner keeps its items for the next poll), not a
    count of items accepted."""
    import ingest.push

    monkeypatch.setattr(ingest.push, "PUSH_TIMEOUT_MS", 3000)  # the test waits 3 s, not 15
    upgrade(sqlite_url)
    broker = EmbeddedBroker().start()
    settings = load_settings(
        kafka_bootstrap=broker.bootstrap, database_url=sqlite_url, data_dir=tmp_path,
        topic_prefix=f"gone-{uuid.uuid4().hex[:8]}", api_token="admin", deliver_in_api=False,
    )  # fmt: skip
    try:
        with TestClient(create_api(settings)) as client:
            vendor = key(settings, "ingest")
            up = client.post("/ingest/wire", json={"title": "Shares rise"}, headers=vendor)
            assert up.status_code == 202 and up.json()["accepted"] == 1
            broker.stop()
            down = client.post("/ingest/wire", json={"title": "Shares fall"}, headers=vendor)
        assert down.status_code == 503, down.text
        assert "the broker did not take" in down.text and "push the items again" in down.text
    finally:
        broker.stop()


def test_a_broker_that_does_not_answer_is_a_503_saying_why_and_the_api_answers_meanwhile(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The push's producer is made on the first push, and making it waits for the broker (up to
    PUSH_TIMEOUT_MS). It waits in a thread: on the event loop it held every other request of the
    API (SSE, alerts, health) for as long."""
    import ingest.push

    monkeypatch.setattr(ingest.push, "PUSH_TIMEOUT_MS", 3000)
    upgrade(sqlite_url)
    settings = load_settings(
        kafka_bootstrap=f"127.0.0.1:{free_port()}", database_url=sqlite_url, data_dir=tmp_path,
        api_token="admin", deliver_in_api=False,
    )  # fmt: skip
    answers: dict[str, Any] = {}
    with TestClient(create_api(settings)) as client:
        vendor = key(settings, "ingest")

        def push() -> None:
            answers["push"] = client.post("/ingest/wire", json={"title": "x"}, headers=vendor)

        pusher = threading.Thread(target=push)
        pusher.start()
        time.sleep(0.5)  # the push is waiting for the broker
        health = client.get("/healthz")
        waiting = pusher.is_alive()
        pusher.join(30)
    assert health.status_code == 200
    assert waiting, "the health check was held until the push gave up"
    answer = answers["push"]
    assert answer.status_code == 503, answer.text
    assert "does not answer" in answer.text and "cannot connect" in answer.text
