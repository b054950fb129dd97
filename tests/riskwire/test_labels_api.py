"""Documents and analysts' labels over HTTP (``riskwire.labels_api``), on SQLite and PostgreSQL
through FastAPI's test client: who may label, what a label must be, a relabel replacing the
caller's own, and a document shown as the models judged it."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from riskwire.api import create_api
from riskwire.settings import load_settings
from storage import delivery, make_engine, repository, session_factory, upgrade
from tests.factories import make_document, make_score
from tests.replay_helpers import lexicon_ensemble

TOKEN = "s3cret-token"
ADMIN = {"Authorization": f"Bearer {TOKEN}"}
T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
DOC = make_document(title="Acme cuts outlook", text="Acme cuts its full-year outlook.")


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[tuple[TestClient, dict[str, Any]]]:
    upgrade(database_url)
    settings = load_settings(database_url=database_url, data_dir=tmp_path, api_token=TOKEN)
    engine = make_engine(database_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        repository.upsert_documents(session, [DOC])
        repository.upsert_scores(session, [make_score(DOC.id, ticker=None, score=-0.7)])
        keys = {
            name: {"Authorization": f"Bearer {delivery.create_api_key(session, name, scopes, T0)}"}
            for name, scopes in (("ana", ["labels"]), ("bo", ["labels"]),
                                 ("reader", ["alerts:read"]))
        }  # fmt: skip
    with TestClient(create_api(settings, lambda: lexicon_ensemble())) as test_client:
        yield test_client, keys
    engine.dispose()


def test_labelling_needs_the_labels_scope(client: tuple[TestClient, dict[str, Any]]) -> None:
    http, keys = client
    url = f"/documents/{DOC.id}/label"
    assert http.put(url, json={"label": "negative"}).status_code == 401
    refused = http.put(url, json={"label": "negative"}, headers=keys["reader"])
    assert refused.status_code == 403 and "labels" in refused.json()["detail"]
    assert http.get("/labels", headers=keys["reader"]).status_code == 403
    assert http.put(url, json={"label": "negative"}, headers=ADMIN).json()["labeller"] == "admin"


def test_a_label_replaces_the_callers_own_and_the_document_shows_every_one(
    client: tuple[TestClient, dict[str, Any]],
) -> None:
    http, keys = client
    url = f"/documents/{DOC.id}/label"
    queued = http.get("/labels/queue", headers=keys["ana"]).json()["items"]
    assert [(q["document_id"], q["label"]) for q in queued] == [(DOC.id, "negative")]
    first = http.put(url, json={"label": "neutral"}, headers=keys["ana"])
    assert http.get("/labels/queue", headers=keys["ana"]).json()["items"] == []
    assert first.status_code == 200 and first.json()["label"] == "neutral"
    again = http.put(url, json={"label": "negative", "note": "a warning"}, headers=keys["ana"])
    assert again.json()["note"] == "a warning"
    http.put(url, json={"label": "negative"}, headers=keys["bo"])
    view = http.get(f"/documents/{DOC.id}", headers=keys["reader"]).json()
    assert view["title"] == "Acme cuts outlook" and view["tickers"][0]["ticker"] == "ACME"
    assert [(s["model_version"], s["label"]) for s in view["scores"]] == [("test-1", "negative")]
    assert [v["member"] for v in view["votes"]] == ["m1"]
    assert sorted(lab["label"] for lab in view["labels"]) == ["negative", "negative"]
    assert len({lab["labeller"] for lab in view["labels"]}) == 2
    listed = http.get("/labels", params={"limit": 1}, headers=keys["ana"]).json()
    assert len(listed["items"]) == 1 and listed["next_cursor"]
    rest = http.get("/labels", params={"cursor": listed["next_cursor"]}, headers=keys["ana"])
    assert len(rest.json()["items"]) == 1 and rest.json()["next_cursor"] is None
    assert http.delete(url, headers=keys["bo"]).status_code == 204
    assert http.delete(url, headers=keys["bo"]).status_code == 404  # nothing of bo's left
    view = http.get(f"/documents/{DOC.id}", headers=keys["reader"]).json()
    assert [lab["label"] for lab in view["labels"]] == ["negative"]


def test_a_label_must_name_a_stored_document_and_a_known_sentiment(
    client: tuple[TestClient, dict[str, Any]],
) -> None:
    http, keys = client
    unknown = http.put(f"/documents/{'f' * 32}/label", json={"label": "negative"},
                       headers=keys["ana"])  # fmt: skip
    assert unknown.status_code == 404 and "no document" in unknown.json()["detail"]
    url = f"/documents/{DOC.id}/label"
    assert http.put(url, json={"label": "bearish"}, headers=keys["ana"]).status_code == 422
    assert http.put(url, json={"label": "negative", "x": 1}, headers=keys["ana"]).status_code == 422
    long_note = http.put(url, json={"label": "negative", "note": "x" * 2001}, headers=keys["ana"])
    assert long_note.status_code == 422
    assert http.get(f"/documents/{'f' * 32}", headers=keys["reader"]).status_code == 404
    assert http.get("/labels", params={"cursor": "junk"}, headers=keys["ana"]).status_code == 422
    loud = http.get("/labels/queue", params={"rank": "loudness"}, headers=keys["ana"])
    assert loud.status_code == 422
    assert http.get("/labels", headers=keys["ana"]).json()["items"] == []
