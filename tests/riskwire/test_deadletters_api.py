"""``/deadletters`` over a real database (SQLite and PostgreSQL), through FastAPI's test client:
admin only, the same selections as the CLI, and a redrive's plan (the sending itself is tested
against the real broker in ``tests/streams/test_redrive.py``)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from riskwire.api import create_api
from riskwire.records import DeadLetter
from riskwire.settings import load_settings
from storage import delivery, make_engine, session_factory, upgrade
from storage.repository import insert_dead_letters
from tests.replay_helpers import lexicon_ensemble

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LETTERS = [
    DeadLetter.of("normalise", "schema 'raw/9' is not 'raw/1'", b'{"schema": "raw/9"}',
                  occurred_at=T0, topic="riskwire.raw.news", key="feed:1"),
    DeadLetter.of("normalise", "schema 'raw/8' is not 'raw/1'", b'{"schema": "raw/8"}',
                  occurred_at=T0 + timedelta(hours=1), topic="riskwire.raw.news", key="feed:2"),
    DeadLetter.of("late", "late: 5 days behind", b'{"schema": "score/1"}',
                  occurred_at=T0 + timedelta(hours=2), key="ACME"),
]  # fmt: skip


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    upgrade(database_url)
    settings = load_settings(database_url=database_url, data_dir=tmp_path, api_token=TOKEN)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        insert_dead_letters(session, LETTERS)
    with TestClient(create_api(settings, lambda: lexicon_ensemble())) as test_client:
        yield test_client
    engine.dispose()


def test_dead_letters_are_for_admins_only(client: TestClient, database_url: str) -> None:
    assert client.get("/deadletters").status_code == 401
    with session_factory(make_engine(database_url)).begin() as session:
        reader = delivery.create_api_key(session, "desk", ["alerts:read"], T0)
    refused = client.get("/deadletters", headers={"Authorization": f"Bearer {reader}"})
    assert refused.status_code == 403 and "admin" in refused.json()["detail"]
    assert client.post("/deadletters/redrive", json={"all": True}).status_code == 401


def test_letters_are_listed_summarised_and_shown_whole(client: TestClient) -> None:
    listed = client.get("/deadletters", headers=AUTH).json()
    assert listed["total"] == 3
    assert [d["id"] for d in listed["letters"]] == [d.id for d in reversed(LETTERS)]
    assert all("payload" not in d and d["status"] == "dead" for d in listed["letters"])
    late = client.get("/deadletters", params={"stage": "late"}, headers=AUTH).json()
    assert [d["id"] for d in late["letters"]] == [LETTERS[2].id]
    since = client.get("/deadletters", params={"since": "2026-12-01T09:30:00Z"}, headers=AUTH)
    assert since.json()["total"] == 2
    causes = client.get("/deadletters/summary", headers=AUTH).json()["causes"]
    assert [(c["stage"], c["reason"], c["letters"]) for c in causes] == [
        ("normalise", "schema '…' is not '…'", 2), ("late", "late: N days behind", 1)
    ]  # fmt: skip
    whole = client.get(f"/deadletters/{LETTERS[0].id[:10]}", headers=AUTH).json()
    assert whole["payload"] == '{"schema": "raw/9"}' and whole["key"] == "feed:1"
    assert client.get(f"/deadletters/{'0' * 32}", headers=AUTH).status_code == 404
    bad = client.get("/deadletters/not-an-id", headers=AUTH)
    assert bad.status_code == 422 and "not a dead letter id" in bad.json()["detail"]
    unknown = client.get("/deadletters", params={"status": "buried"}, headers=AUTH)
    assert unknown.status_code == 422


def test_a_redrive_must_say_which_letters_and_a_dry_run_says_where_they_would_go(
    client: TestClient,
) -> None:
    vague = client.post("/deadletters/redrive", json={}, headers=AUTH)
    assert vague.status_code == 422 and "say which letters" in vague.json()["detail"]
    plan = client.post("/deadletters/redrive", json={"all": True, "dry_run": True}, headers=AUTH)
    report = plan.json()
    assert report["selected"] == 3 and report["sent"] == {"riskwire.raw.news": 2}
    assert list(report["refused"].values()) == [1] and report["dry_run"]
    # nothing was marked, and without a broker nothing can be sent
    assert {d["status"] for d in client.get("/deadletters", headers=AUTH).json()["letters"]} == {
        "dead"
    }
    no_broker = client.post("/deadletters/redrive", json={"stages": ["normalise"]}, headers=AUTH)
    assert no_broker.status_code == 503
