"""The alert API over a real database: keys and scopes, subscriptions kept apart per key, the SSE
stream with Last-Event-ID, delivery state and paginated history."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session, sessionmaker

from riskwire.api import create_api
from riskwire.records import Alert, AlertState, Vote
from riskwire.settings import Settings
from storage import delivery as store
from storage import repository
from tests.delivery.servers import serve
from tests.factories import T0, TWO_VERSIONS, make_alert, make_document, make_score

ADMIN = "admin-token"


@pytest.fixture
def api_settings(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"api_token": ADMIN, "deliver_in_api": False, "webhook_allow_private": False}
    )


@pytest.fixture
def client(api_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_api(api_settings)) as test_client:
        yield test_client


def key(sessions: sessionmaker[Session], *scopes: str, name: str = "k") -> dict[str, str]:
    with sessions.begin() as session:
        token = store.create_api_key(session, name, list(scopes), datetime.now(UTC))
    return {"Authorization": f"Bearer {token}"}


def store_alerts(sessions: sessionmaker[Session], alerts: list[Alert]) -> None:
    with sessions.begin() as session:
        repository.upsert_alerts(session, alerts)
        store.record_alert_events(session, alerts, store.Targets(), datetime.now(UTC))


def read_sse(client: TestClient, url: str, headers: dict[str, str]) -> list[dict[str, Any]]:
    """The events of a stream the server closes (``limit``), as {id, event, data}."""
    events = []
    with client.stream("GET", url, headers=headers) as answer:
        assert answer.status_code == 200, answer.read()
        assert answer.headers["content-type"].startswith("text/event-stream")
        for block in answer.read().decode().split("\n\n"):
            fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
            if "data" in fields:
                events.append(
                    {"id": int(fields["id"]), "event": fields["event"],
                     "data": json.loads(fields["data"])}
                )  # fmt: skip
    return events


WEBHOOK = {"name": "desk", "channel": "webhook", "url": "https://hooks.example.com/riskwire"}


@pytest.fixture(autouse=True)
def public_dns(monkeypatch: pytest.MonkeyPatch) -> None:
    """hooks.example.com resolves to a public address, without the network."""
    from riskwire.delivery import model

    real = model.resolve

    def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14"] if host == "hooks.example.com" else real(host, port)

    monkeypatch.setattr(model.check_webhook_url, "__defaults__", (resolve,))


def test_subscriptions_need_a_key_with_the_scope(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    assert client.get("/subscriptions").status_code == 401
    assert (
        client.get("/subscriptions", headers={"Authorization": "Bearer rw_x_y"}).status_code == 401
    )
    reader = key(sessions, "alerts:read")
    assert client.post("/subscriptions", json=WEBHOOK, headers=reader).status_code == 403
    assert client.get("/alerts", headers=reader).status_code == 200
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert client.get("/alerts", headers=admin).status_code == 200
    # the admin token is no key: subscriptions belong to keys
    assert client.post("/subscriptions", json=WEBHOOK, headers=admin).status_code == 403


def test_a_revoked_key_is_refused(client: TestClient, sessions: sessionmaker[Session]) -> None:
    headers = key(sessions, "alerts:read")
    assert client.get("/alerts", headers=headers).status_code == 200
    key_id = headers["Authorization"].split("_")[1]
    with sessions.begin() as session:
        assert store.revoke_api_key(session, key_id, datetime.now(UTC))
    assert client.get("/alerts", headers=headers).status_code == 401


def test_a_webhook_subscription_is_created_changed_and_deleted(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    owner = key(sessions, "subscriptions:write")
    body = {**WEBHOOK, "tickers": ["acme", " beta "], "min_severity": "warning"}
    created = client.post("/subscriptions", json=body, headers=owner)
    assert created.status_code == 201, created.text
    sub = created.json()
    assert sub["secret"] and sub["tickers"] == ["ACME", "BETA"] and sub["active"]
    assert created.headers["location"] == f"/subscriptions/{sub['id']}"
    fetched = client.get(f"/subscriptions/{sub['id']}", headers=owner).json()
    assert fetched["secret"] is None  # shown once
    patched = client.patch(
        f"/subscriptions/{sub['id']}", json={"active": False, "rules": ["negative_surge"]},
        headers=owner,
    ).json()  # fmt: skip
    assert (patched["active"], patched["rules"]) == (False, ["negative_surge"])
    assert client.delete(f"/subscriptions/{sub['id']}", headers=owner).status_code == 204
    assert client.get(f"/subscriptions/{sub['id']}", headers=owner).status_code == 404


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({**WEBHOOK, "url": "http://127.0.0.1:8080/x"}, "loopback"),
        ({**WEBHOOK, "url": "http://169.254.169.254/latest/meta-data"}, "link-local"),
        ({**WEBHOOK, "url": None}, "needs a url"),
        ({"name": "s", "channel": "sse", "url": "https://hooks.example.com/"}, "has no url"),
        ({**WEBHOOK, "min_severity": "urgent"}, "min_severity"),
        ({**WEBHOOK, "unknown": 1}, "unknown"),
    ],
)
def test_bad_subscriptions_are_refused_with_the_reason(
    client: TestClient, sessions: sessionmaker[Session], body: dict[str, Any], reason: str
) -> None:
    answer = client.post("/subscriptions", json=body, headers=key(sessions, "subscriptions:write"))
    assert answer.status_code == 422 and reason in answer.text


def test_one_key_never_sees_another_keys_subscriptions(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    alice = key(sessions, "subscriptions:write", name="alice")
    bob = key(sessions, "subscriptions:write", name="bob")
    mine = client.post("/subscriptions", json=WEBHOOK, headers=alice).json()["id"]
    assert [s["id"] for s in client.get("/subscriptions", headers=alice).json()] == [mine]
    assert client.get("/subscriptions", headers=bob).json() == []
    for method in ("get", "delete"):
        assert getattr(client, method)(f"/subscriptions/{mine}", headers=bob).status_code == 404
    assert (
        client.patch(f"/subscriptions/{mine}", json={"active": False}, headers=bob).status_code
        == 404
    )
    assert client.get(f"/subscriptions/{mine}/deliveries", headers=bob).status_code == 404
    assert client.get(f"/subscriptions/{mine}/events", headers=bob).status_code == 404
    assert client.get(f"/subscriptions/{mine}", headers=alice).json()["active"]


def test_the_alert_stream_resumes_from_last_event_id_and_filters(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    reader = key(sessions, "alerts:read")
    alerts = [make_alert(ticker=t) for t in ("ACME", "BETA", "ACME", "GAMA")]
    store_alerts(sessions, alerts)
    first = read_sse(client, "/alerts/stream?since=0&limit=2", reader)
    assert [e["data"]["id"] for e in first] == [a.id for a in alerts[:2]]
    assert first[0]["event"] == "alert" and first[0]["id"] < first[1]["id"]
    resumed = read_sse(
        client, "/alerts/stream?limit=2", {**reader, "Last-Event-ID": str(first[-1]["id"])}
    )
    assert [e["data"]["id"] for e in resumed] == [a.id for a in alerts[2:]]
    only_acme = read_sse(client, "/alerts/stream?since=0&limit=2&tickers=acme", reader)
    assert [e["data"]["id"] for e in only_acme] == [alerts[0].id, alerts[2].id]
    # the key may also come as a query parameter (EventSource cannot set headers)
    token = reader["Authorization"].split(" ")[1]
    assert len(read_sse(client, f"/alerts/stream?since=0&limit=1&access_token={token}", {})) == 1


def test_an_sse_subscription_streams_what_its_filters_match(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    owner = key(sessions, "subscriptions:write")
    body = {"name": "critical only", "channel": "sse", "min_severity": "critical"}
    sid = client.post("/subscriptions", json=body, headers=owner).json()["id"]
    alerts = [make_alert(severity=s) for s in ("warning", "critical", "info", "critical")]
    store_alerts(sessions, alerts)
    got = read_sse(client, f"/subscriptions/{sid}/events?since=0&limit=2", owner)
    assert [e["data"]["id"] for e in got] == [alerts[1].id, alerts[3].id]


def test_delivery_state_is_queryable_per_subscription(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    owner = key(sessions, "subscriptions:write")
    sid = client.post("/subscriptions", json=WEBHOOK, headers=owner).json()["id"]
    store_alerts(sessions, [make_alert() for _ in range(3)])
    page = client.get(f"/subscriptions/{sid}/deliveries?limit=2", headers=owner).json()
    assert len(page["items"]) == 2 and page["next_cursor"]
    rest = client.get(
        f"/subscriptions/{sid}/deliveries?limit=2&cursor={page['next_cursor']}", headers=owner
    ).json()
    assert len(rest["items"]) == 1 and rest["next_cursor"] is None
    items = page["items"] + rest["items"]
    assert {d["status"] for d in items} == {"pending"} and len({d["id"] for d in items}) == 3
    assert client.get("/deliveries", headers=owner).status_code == 403  # admin only
    admin = {"Authorization": f"Bearer {ADMIN}"}
    assert len(client.get("/deliveries", headers=admin).json()["items"]) == 3


def test_alert_history_pages_through_everything_once(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    reader = key(sessions, "alerts:read")
    alerts = [make_alert(ticker="ACME" if i % 2 else "BETA") for i in range(7)]
    resolved = alerts[0].model_copy(update={"state": AlertState.RESOLVED})
    store_alerts(sessions, [*alerts, resolved])
    seen, cursor = [], None
    while True:
        url = "/alerts?limit=3" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url, headers=reader).json()
        seen += [a["id"] for a in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == [a.id for a in sorted(alerts, key=lambda a: (a.window_end, a.id), reverse=True)]
    acme = client.get("/alerts?ticker=acme", headers=reader).json()["items"]
    assert {a["ticker"] for a in acme} == {"ACME"} and len(acme) == 3
    done = client.get("/alerts?state=resolved", headers=reader).json()["items"]
    assert [a["id"] for a in done] == [alerts[0].id] and done[0]["resolved_at"]
    one = client.get(f"/alerts/{alerts[3].id}", headers=reader).json()
    assert one["values"] == alerts[3].values and one["evidence"] == ["d1", "d2"]
    assert client.get("/alerts?cursor=garbage", headers=reader).status_code == 422


def test_an_alert_shows_its_evidence_with_scores_and_member_votes(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    first, second = make_document(title="Plant fire"), make_document(title="Recall widens")
    votes = (
        Vote(member="finlex", model_version="finlex-1", label="neutral",
             probabilities=(0.3, 0.5, 0.2)),
        Vote(member="minilm-ft", model_version="ft-2", label="negative",
             probabilities=(0.9, 0.08, 0.02)),
    )  # fmt: skip
    with sessions.begin() as session:
        repository.upsert_documents(session, [first, second])
        repository.upsert_scores(session, [
            make_score(first.id, score=-0.7, votes=votes),
            make_score(second.id, score=-0.4, votes=votes[:1]),
            make_score(second.id, score=0.5, run_id="replay-1"),  # another run's score
            # scored again in the run by a later ensemble, after the group counted the first
            make_score(second.id, score=0.6, model_version="test-2"),
            make_score(first.id, score=0.3, model_version="test-0"),
        ])  # fmt: skip
        repository.upsert_ticker_sentiment(session, [
            {"run_id": "live", "ticker": "ACME", "document_id": d.id, "published_at": T0,
             "score": s, "label": "negative", "window_documents": 2, "window_mean_score": -0.55,
             "window_negative_share": 1.0}
            for d, s in ((second, -0.4), (first, -0.7))
        ])  # fmt: skip
        repository.register_model_versions(session, TWO_VERSIONS, T0)  # who cast which votes
    alert = make_alert(evidence=(second.id, first.id, "f" * 32))  # the most weighty first
    store_alerts(sessions, [alert])
    body = client.get(f"/alerts/{alert.id}", headers=key(sessions, "alerts:read")).json()
    docs = body["documents"]
    assert [d["id"] for d in docs] == [second.id, first.id, "f" * 32]
    assert docs[2] == {"id": "f" * 32, "found": False}  # gone since (retention)
    assert docs[0]["title"] == "Recall widens" and docs[0]["score"]["score"] == -0.4
    assert docs[0]["score"]["model_version"] == "test-1" and docs[0]["score"]["label"] == "negative"
    assert docs[1]["score"]["model_version"] == "test-1" and docs[1]["score"]["score"] == -0.7
    assert [v["member"] for v in docs[1]["votes"]] == ["finlex", "minilm-ft"]  # not test-0's m1
    assert [v["model_version"] for v in docs[0]["votes"]] == ["finlex-1"]  # not test-2's m1-1
    assert docs[1]["votes"][1] == {
        "member": "minilm-ft", "model_version": "ft-2", "label": "negative",
        "probabilities": [0.9, 0.08, 0.02],
    }  # fmt: skip
    assert docs[1]["published_at"] == first.published_at.isoformat()


def test_ticker_scores_page_in_event_time(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    rows = [
        {"run_id": "live", "ticker": "ACME", "document_id": f"{i:032x}",
         "published_at": T0 + timedelta(minutes=i), "score": -i / 10, "window_documents": i + 1,
         "window_mean_score": -0.1, "window_negative_share": 0.5}
        for i in range(5)
    ]  # fmt: skip
    with sessions.begin() as session:
        repository.upsert_ticker_sentiment(session, rows)
    reader = key(sessions, "alerts:read")
    first = client.get("/tickers/acme/scores?limit=3", headers=reader).json()
    rest = client.get(
        f"/tickers/ACME/scores?limit=3&cursor={first['next_cursor']}", headers=reader
    ).json()
    got = [r["document_id"] for r in first["items"] + rest["items"]]
    assert got == [r["document_id"] for r in rows] and rest["next_cursor"] is None
    since = (T0 + timedelta(minutes=3)).isoformat().replace("+00:00", "Z")
    late = client.get(f"/tickers/ACME/scores?since={since}", headers=reader).json()["items"]
    assert [r["score"] for r in late] == [-0.3, -0.4]


def test_without_an_admin_token_alerts_are_readable_without_a_key(
    api_settings: Settings, sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    open_settings = api_settings.model_copy(update={"api_token": None})
    with TestClient(create_api(open_settings)) as open_client:
        assert open_client.get("/alerts").status_code == 200
        assert open_client.get("/subscriptions").status_code == 401


def test_admins_manage_keys_through_the_api(client: TestClient) -> None:
    admin = {"Authorization": f"Bearer {ADMIN}"}
    created = client.post("/keys", json={"name": "desk", "scopes": ["alerts:read"]}, headers=admin)
    assert created.status_code == 201, created.text
    token = created.json()["token"]
    listed = client.get("/keys", headers=admin).json()
    assert [k["name"] for k in listed] == ["desk"] and "token" not in listed[0]
    mine = {"Authorization": f"Bearer {token}"}
    assert client.get("/alerts", headers=mine).status_code == 200
    assert client.get("/keys", headers=mine).status_code == 403
    bad = client.post("/keys", json={"name": "x", "scopes": ["root"]}, headers=admin)
    assert bad.status_code == 422 and "unknown scopes" in bad.text
    assert client.delete(f"/keys/{created.json()['id']}", headers=admin).status_code == 204
    assert client.get("/alerts", headers=mine).status_code == 401


def test_the_openapi_document_describes_the_alert_api(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/subscriptions", "/subscriptions/{sid}", "/subscriptions/{sid}/events",
                 "/subscriptions/{sid}/deliveries", "/alerts", "/alerts/stream", "/alerts/live",
                 "/tickers/{ticker}/scores", "/keys", "/deliveries"):  # fmt: skip
        assert path in paths, path


def test_requests_and_event_streams_are_counted_by_route_in_the_metrics(
    client: TestClient, sessions: sessionmaker[Session]
) -> None:
    reader = key(sessions, "alerts:read")
    store_alerts(sessions, [make_alert(ticker="ACME"), make_alert(ticker="BETA")])
    assert client.get("/alerts", headers=reader).status_code == 200
    assert client.get("/alerts").status_code == 401
    assert client.get("/alerts/no-such-alert", headers=reader).status_code == 404
    assert client.get("/no/such/route").status_code == 404
    assert len(read_sse(client, "/alerts/stream?since=0&limit=2", reader)) == 2
    text = client.get("/metrics").text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }

    def requests(route: str, code: int) -> float:
        labels = (("method", "GET"), ("route", route), ("status", str(code)))
        return samples.get(("riskwire_http_requests_total", labels), 0.0)

    assert requests("/alerts", 200) == 1 and requests("/alerts", 401) == 1
    assert requests("/alerts/{alert_id}", 404) == 1  # the route's template, not the id
    assert requests("unmatched", 404) == 1
    assert requests("/alerts/stream", 200) == 1
    assert samples[("riskwire_sse_events_sent_total", ())] == 2
    assert samples[("riskwire_sse_clients", ())] == 0  # the stream has ended
    with client.stream("GET", "/alerts/stream?since=0&limit=3", headers=reader) as answer:
        lines = answer.iter_lines()
        assert next(lines).startswith("retry:")  # open: it waits for its third event
        assert "riskwire_sse_clients 1.0" in client.get("/metrics").text
        store_alerts(sessions, [make_alert(ticker="GAMA")])
        assert sum(line.startswith("data: ") for line in lines) == 3
    assert "riskwire_sse_clients 0.0" in client.get("/metrics").text
    timed = samples[("riskwire_http_request_seconds_count", (("route", "/alerts"),))]
    assert timed == 2


def test_a_client_that_leaves_an_event_stream_closes_it_on_the_server(
    api_settings: Settings, sessions: sessionmaker[Session]
) -> None:
    """Over a real server: the stream notices its client has gone (no middleware may hide the
    disconnect from it), and the open-stream gauge comes back down."""
    reader = key(sessions, "alerts:read")

    def open_streams(url: str) -> float:
        text = httpx.get(f"{url}/metrics").text
        (value,) = [line.split()[1] for line in text.splitlines()
                    if line.startswith("riskwire_sse_clients ")]  # fmt: skip
        return float(value)

    with serve(create_api(api_settings)) as url, httpx.Client(timeout=10) as http:
        with http.stream("GET", f"{url}/alerts/stream", headers=reader) as answer:
            lines = answer.iter_lines()  # kept: a dropped iterator closes the connection
            assert next(lines).startswith("retry:")
            assert open_streams(url) == 1
        deadline = time.monotonic() + 10
        while open_streams(url) != 0:  # the server polls for new events every 0.5 s
            assert time.monotonic() < deadline, "the server kept a stream its client had left"
            time.sleep(0.1)
