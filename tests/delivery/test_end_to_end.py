"""End to end: the bundled feed through the real broker, a worker and PostgreSQL; the rules fire in
the stream, and the API process (run here with uvicorn, its dispatcher inside) delivers:

- a webhook receiver that fails its first two attempts still gets one correctly signed delivery of
  every alert;
- a client on the server-sent event stream gets every alert;
- the real Alertmanager lists them;
- a receiver that is down for a minute gets everything once it is back.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ingest import JsonlSource, RawProducer
from riskwire.api import create_api
from riskwire.broker import EmbeddedBroker
from riskwire.delivery.model import verify
from riskwire.demo import SAMPLE
from riskwire.settings import Settings
from riskwire.worker import spawn_worker, stop_worker
from storage import delivery as store
from storage import make_engine, session_factory, upgrade
from storage.tables import AlertEventRow, AlertRow
from tests.delivery.conftest import deliveries
from tests.delivery.servers import Alertmanager, Receiver, serve
from tests.kafka_helpers import stream_settings

pytestmark = [pytest.mark.integration, pytest.mark.slow]
DOWN_FOR = 60.0  # seconds


def wait_until(what: str, check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.fixture
def api_server(settings_e2e: Settings) -> Iterator[str]:
    with serve(create_api(settings_e2e)) as url:
        yield url


@pytest.fixture
def settings_e2e(
    postgres_url: str, broker: EmbeddedBroker, alertmanager: Alertmanager, tmp_path: Path
) -> Settings:
    upgrade(postgres_url)
    return stream_settings(
        "e2e", broker.bootstrap, postgres_url, tmp_path, score_batch_wait_s=0.2,
        alertmanager_url=alertmanager.url, webhook_allow_private=True, delivery_backoff_s=0.5,
        delivery_backoff_cap_s=5.0, delivery_max_attempts=100, delivery_poll_s=0.2,
    )  # fmt: skip


class SseClient(threading.Thread):
    """Reads /alerts/stream in the background, as a dashboard would."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url, self.events, self.stop = url, [], threading.Event()

    def run(self) -> None:
        try:
            with (
                httpx.Client(timeout=None) as client,
                client.stream("GET", self.url) as answer,
            ):
                for line in answer.iter_lines():
                    if line.startswith("data: "):
                        self.events.append(json.loads(line[6:]))
                    if self.stop.is_set():
                        return
        except httpx.HTTPError:  # the server going away at the end of the test
            if not self.stop.is_set():
                raise


def test_alerts_from_the_stream_reach_webhooks_sse_and_alertmanager(
    settings_e2e: Settings, api_server: str, alertmanager: Alertmanager, tmp_path: Path
) -> None:
    settings = settings_e2e
    sessions = session_factory(make_engine(settings.resolved_database_url))
    with sessions.begin() as session:
        token = store.create_api_key(session, "desk", ["admin"], datetime.now(UTC))
    auth = {"Authorization": f"Bearer {token}"}
    flaky, late = Receiver(fail_first=2), Receiver()
    late.down()
    secrets = {}
    for name, receiver in (("flaky", flaky), ("late", late)):
        body = {"name": name, "channel": "webhook", "url": receiver.url + "/hook"}
        answer = httpx.post(f"{api_server}/subscriptions", json=body, headers=auth)
        assert answer.status_code == 201, answer.text
        secrets[name] = answer.json()["secret"]
    sse = SseClient(f"{api_server}/alerts/stream?access_token={token}")
    sse.start()
    time.sleep(0.5)  # connected before anything fires

    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        with RawProducer(settings.kafka_bootstrap or "", settings.topics) as producer:
            producer.publish(JsonlSource(SAMPLE).read())

        def stored_alerts() -> list[AlertRow]:
            with sessions() as session:
                return list(session.scalars(select(AlertRow).where(AlertRow.run_id == "live")))

        wait_until("the alerts", lambda: len(stored_alerts()) >= 3, 180)
        time.sleep(3)  # the rest of the feed: later alerts and resolutions are stored by now
        alerts = {a.id: a for a in stored_alerts()}
        assert {a.ticker for a in alerts.values()} >= {"HLXB", "GRDN", "KSTL"}
        with sessions() as session:  # firings and resolutions: what is delivered
            events = {e.id: e.alert_id for e in session.scalars(select(AlertEventRow))}
        assert set(events.values()) == set(alerts)

        def delivered(receiver: Receiver) -> list[str]:
            return sorted(r.json()["event_id"] for r in receiver.accepted())

        # the flaky receiver: every event once, signed, after two refused attempts
        wait_until("the flaky receiver", lambda: len(flaky.accepted()) >= len(events), 60)
        assert len(flaky.requests) == len(events) + 2
        for request in flaky.accepted():
            assert verify(secrets["flaky"], request.headers, request.body, now=time.time())
        assert delivered(flaky) == sorted(events)

        # the SSE client saw them all
        wait_until("the SSE client", lambda: len(sse.events) >= len(events), 30)
        assert sorted(e["event_id"] for e in sse.events) == sorted(events)

        # Alertmanager lists every alert still firing (resolved ones have ended)
        firing = {a.id for a in alerts.values() if a.state == "firing"}
        assert firing

        def listed() -> set[str]:
            return {
                a["labels"]["alert_id"] for a in alertmanager.alerts(filter='source="riskwire"')
            }

        wait_until("Alertmanager", lambda: firing <= listed(), 30)

        # the receiver that was down gets everything once it is back, a minute later
        first_try = min(
            (r.created_at for r in deliveries(sessions) if r.subscription_id), default=None
        )
        assert first_try is not None
        time.sleep(max(0.0, DOWN_FOR - (datetime.now(UTC) - first_try).total_seconds()))
        pending = [d for d in deliveries(sessions) if d.status == "pending"]
        assert pending and all(d.attempts >= 3 for d in pending)  # retried all along
        late.up()
        wait_until("the late receiver", lambda: len(late.accepted()) >= len(events), 60)
        assert delivered(late) == sorted(events)  # everything, once each
        for request in late.accepted():
            assert verify(secrets["late"], request.headers, request.body, now=time.time())
    finally:
        sse.stop.set()
        flaky.close()
        late.close()
        assert stop_worker(worker) == 0
        sessions.kw["bind"].dispose()
