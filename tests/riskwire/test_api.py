"""The replay-job API over a real database (SQLite and PostgreSQL), through FastAPI's test client."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from riskwire.api import create_api
from riskwire.settings import load_settings
from storage import make_engine, session_factory, upgrade
from tests.replay_helpers import DAY0, lexicon_ensemble, run_live, world

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
def client(database_url: str, tmp_path: Path) -> Iterator[TestClient]:
    upgrade(database_url)
    settings = load_settings(database_url=database_url, data_dir=tmp_path, api_token=TOKEN)
    ensemble = lexicon_ensemble()
    run_live(session_factory(make_engine(database_url)), settings, ensemble, world())
    with TestClient(create_api(settings, lambda: ensemble)) as test_client:
        yield test_client


def body(**overrides: Any) -> dict[str, Any]:
    data = {
        "from": DAY0.isoformat(),
        "to": (DAY0 + timedelta(days=2)).isoformat(),
        "model_version": lexicon_ensemble().version,
    }
    data.update(overrides)
    return data


def wait_for(client: TestClient, job_id: str, states: set[str], timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/replays/{job_id}", headers=AUTH).json()
        if job["status"] in states:
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} never reached {states}: {job}")


def test_a_job_is_created_polled_and_its_results_fetched(client: TestClient) -> None:
    created = client.post("/replays", json=body(), headers=AUTH)
    assert created.status_code == 202, created.text
    job = created.json()
    assert created.headers["location"] == f"/replays/{job['id']}"
    assert job["status"] in {"pending", "running", "done"} and job["run_id"] == job["id"]

    done = wait_for(client, job["id"], {"done", "failed"})
    assert done["status"] == "done", done["error"]
    assert (done["processed"], done["total"], done["alerts"]) == (432, 432, 3)

    results = client.get(f"/replays/{job['id']}/results", headers=AUTH)
    assert results.status_code == 200
    report = results.json()
    assert report["alert_counts"]["matched"] == 3 and report["scores"]["agreement"] == 1.0
    plot = client.get(f"/replays/{job['id']}/report.png", headers=AUTH)
    assert plot.status_code == 200 and plot.content[:4] == b"\x89PNG"
    listed = client.get("/replays", params={"status": "done"}, headers=AUTH).json()
    assert [j["id"] for j in listed] == [job["id"]]


def test_requests_without_the_token_are_refused(client: TestClient) -> None:
    assert client.get("/replays").status_code == 401
    wrong = client.get("/replays", headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
    assert client.post("/replays", json=body()).status_code == 401
    assert client.get("/healthz").status_code == 200


def test_bad_requests_get_a_clear_error(client: TestClient) -> None:
    backwards = client.post("/replays", json=body(**{"from": body()["to"]}), headers=AUTH)
    assert backwards.status_code == 422 and "is not before" in backwards.json()["detail"]
    naive = client.post("/replays", json=body(**{"from": "2026-03-02T00:00:00"}), headers=AUTH)
    assert naive.status_code == 422
    a_file = client.post("/replays", json=body(source="/etc/passwd"), headers=AUTH)
    assert a_file.status_code == 422
    rules = client.post("/replays", json=body(rules={"rules": [{"nme": "x"}]}), headers=AUTH)
    assert rules.status_code == 422 and "unknown field(s) ['nme']" in rules.json()["detail"]
    assert client.get("/replays/replay-nope", headers=AUTH).status_code == 404
    assert client.post("/replays/replay-nope/cancel", headers=AUTH).status_code == 404


def test_results_wait_for_the_end_and_a_cancelled_job_can_be_resumed(client: TestClient) -> None:
    executor = client.app.state.executor  # type: ignore[attr-defined]
    release = threading.Event()
    blocker = executor.submit(release.wait, 60)  # keeps the job queued while we cancel it
    job = client.post("/replays", json=body(), headers=AUTH).json()
    early = client.get(f"/replays/{job['id']}/results", headers=AUTH)
    assert early.status_code == 409
    cancelled = client.post(f"/replays/{job['id']}/cancel", headers=AUTH)
    assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelled"
    # its run is still queued behind the blocker: resuming now would run the job twice
    queued = client.post(f"/replays/{job['id']}/resume", headers=AUTH)
    assert queued.status_code == 409 and "still queued" in queued.json()["detail"]
    release.set()
    blocker.result()
    executor.submit(lambda: None).result()  # one worker, in order: the job's queued run is over
    assert wait_for(client, job["id"], {"cancelled"})["processed"] == 0
    resumed = client.post(f"/replays/{job['id']}/resume", headers=AUTH)
    assert resumed.status_code == 202
    assert wait_for(client, job["id"], {"done", "failed"})["status"] == "done"
    again = client.post(f"/replays/{job['id']}/resume", headers=AUTH)
    assert again.status_code == 409


def test_the_openapi_document_describes_the_replay_endpoints(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/replays", "/replays/{job_id}", "/replays/{job_id}/cancel",
            "/replays/{job_id}/resume", "/replays/{job_id}/results"} <= set(paths)  # fmt: skip


def test_jobs_left_by_a_shutdown_can_be_resumed_after_a_restart(
    database_url: str, tmp_path: Path
) -> None:
    upgrade(database_url)
    settings = load_settings(database_url=database_url, data_dir=tmp_path, api_token=TOKEN)
    ensemble = lexicon_ensemble()
    run_live(session_factory(make_engine(database_url)), settings, ensemble, world())
    with TestClient(create_api(settings, lambda: ensemble)) as first:
        executor = first.app.state.executor  # type: ignore[attr-defined]
        # the job stays queued until the shutdown drops it; the shutdown then waits this out.
        # (0.5 s was not enough: a slow first POST let the job start and finish before it.)
        executor.submit(time.sleep, 5)
        job = first.post("/replays", json=body(), headers=AUTH).json()
    with TestClient(create_api(settings, lambda: ensemble)) as second:
        left = second.get(f"/replays/{job['id']}", headers=AUTH).json()
        assert left["status"] in {"pending", "cancelled"} and left["processed"] == 0
        assert second.post(f"/replays/{job['id']}/resume", headers=AUTH).status_code == 202
        assert wait_for(second, job["id"], {"done", "failed"})["status"] == "done"
