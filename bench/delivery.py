"""Webhook delivery throughput and latency through the outbox.

    riskwire bench delivery [--subscriptions 20] [--rate 20] [--seconds 10] [--receiver-latency-ms 0]
                            [--database-url URL] [--json]

N webhook subscriptions all match every alert; M alerts a second are stored for S seconds the way the
stream stores them (alert, event and N deliveries in one transaction), while the dispatcher (as in
the API process) delivers them to a receiver running in another process. Figures, all in one run:

- sustained: deliveries/s from the first alert stored to the last delivery received, and delivery
  latency (alert stored -> webhook received) p50 / p99 / max;
- capacity: a burst of as many deliveries stored at once, drained as fast as the dispatcher can;
- baseline: signed webhooks POSTed one after another with no database and no outbox, and the
  outbox's capacity as a ratio of it (it sends concurrently, and pays for a database round trip
  per batch). ``--receiver-latency-ms`` makes the receiver answer late, as one across the internet
  does: that is where concurrent sending pays.
"""

from __future__ import annotations

import json
import multiprocessing
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from riskwire.delivery.dispatcher import Dispatcher, start_in_thread
from riskwire.delivery.senders import Outgoing, WebhookSender
from riskwire.records import Alert, AlertState, Severity
from riskwire.settings import load_settings
from storage import delivery as store
from storage import make_engine, repository, session_factory, upgrade
from storage.tables import ApiKeyRow, SubscriptionRow


def _receiver(port: int, out: Path, ready: Any, stop: Any, latency_s: float) -> None:
    """A minimal HTTP/1.1 webhook receiver (its own process, so it does not share a GIL with the
    dispatcher): answers 200 and records (event id, arrival time) per request."""
    import asyncio

    arrivals: list[tuple[str, float]] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                event = ""
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    if name.lower() == b"content-length":
                        length = int(value)
                    elif name.lower() == b"x-riskwire-event":
                        event = value.strip().decode()
                await reader.readexactly(length)
                arrivals.append((event, time.time()))
                if latency_s:  # a receiver across a network, or one that does some work
                    await asyncio.sleep(latency_s)
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    async def main() -> None:
        server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
        ready.set()
        while not stop.is_set():
            await asyncio.sleep(0.05)
        server.close()
        out.write_text(json.dumps(arrivals))

    asyncio.run(main())


def _alert(i: int, t0: datetime) -> Alert:
    start = t0 + timedelta(minutes=i)
    return Alert(
        id=f"{i:032x}", rule="negative_surge", ticker=f"T{i % 50:03d}", severity=Severity.WARNING,
        state=AlertState.FIRING, window_start=start, window_end=start + timedelta(hours=2),
        event_time=start + timedelta(hours=2), values={"documents": 5.0},
        thresholds={"min_documents": 4.0}, evidence=("d1",), explanation="bench alert",
    )  # fmt: skip


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def run(
    subscriptions: int = 20,
    rate: float = 20.0,
    seconds: float = 10.0,
    database_url: str | None = None,
    say: Any = print,
    receiver_latency_ms: float = 0.0,
) -> dict[str, Any]:
    workdir = Path(tempfile.mkdtemp(prefix="riskwire-bench-delivery-"))
    url = database_url or f"sqlite:///{workdir / 'bench.db'}"
    upgrade(url)
    settings = load_settings(
        database_url=url, data_dir=workdir, webhook_allow_private=True, delivery_poll_s=0.05
    )
    sessions = session_factory(make_engine(url))
    port = _free_port()
    context = multiprocessing.get_context("spawn")
    ready, stop = context.Event(), context.Event()
    arrivals_file = workdir / "arrivals.json"
    latency_s = receiver_latency_ms / 1000
    receiver = context.Process(target=_receiver, args=(port, arrivals_file, ready, stop, latency_s))
    receiver.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the bench receiver did not start")
        hook = f"http://127.0.0.1:{port}/hook"
        now = datetime.now(UTC)
        with sessions.begin() as session:
            session.add(
                ApiKeyRow(id="bench", name="bench", secret_hash="0" * 64, scopes=["admin"],
                          created_at=now)
            )  # fmt: skip
            for i in range(subscriptions):
                session.add(
                    SubscriptionRow(
                        id=f"sub{i:04d}", api_key_id="bench", name=f"s{i}", channel="webhook",
                        url=hook, secret=f"secret-{i}", tickers=[], sectors=[], rules=[],
                        min_severity="info", active=True, created_at=now, updated_at=now,
                    )
                )  # fmt: skip
        total_alerts = int(rate * seconds)
        expected = total_alerts * subscriptions

        # baseline: the same number of signed webhooks, POSTed one after another, no outbox
        sender = WebhookSender(settings.public_url, allow_private=True)
        baseline_n = min(expected, 2000 if not latency_s else max(20, int(2 / latency_s)))
        item = Outgoing("d", "webhook", 0, "baseline", 0, _alert(0, now).model_dump(mode="json"),
                        url=hook, secret="s")  # fmt: skip
        started = time.perf_counter()
        for _ in range(baseline_n):
            sender.send(item)
        baseline_per_s = baseline_n / (time.perf_counter() - started)
        sender.close()

        say(
            f"{subscriptions} subscriptions x {rate:g} alerts/s for {seconds:g} s = "
            f"{expected:,} deliveries through the outbox ({url.split(':')[0]}) ..."
        )
        dispatcher = Dispatcher(settings, sessions)
        thread, halt = start_in_thread(dispatcher)
        stored_at: dict[str, float] = {}
        t0 = time.time()
        for i in range(total_alerts):  # the stream's writes, at the given rate
            time.sleep(max(0.0, t0 + i / rate - time.time()))
            alert = _alert(i, now)
            with sessions.begin() as session:
                repository.upsert_alerts(session, [alert])
                store.record_alert_events(session, [alert], store.Targets(), datetime.now(UTC))
            stored_at[store.event_id(alert)] = time.time()
        deadline = time.time() + 300
        while _delivered(sessions) < expected and time.time() < deadline:
            time.sleep(0.05)
        sustained_end = time.time()

        # capacity: a burst of alerts stored at once, drained as fast as the dispatcher can
        burst = max(1, total_alerts)
        say(f"a burst of {burst * subscriptions:,} deliveries at once ...")
        alerts = [_alert(total_alerts + i, now) for i in range(burst)]
        burst_start = time.time()
        with sessions.begin() as session:
            repository.upsert_alerts(session, alerts)
            store.record_alert_events(session, alerts, store.Targets(), datetime.now(UTC))
        while _delivered(sessions) < expected + burst * subscriptions and time.time() < deadline:
            time.sleep(0.02)
        burst_s = time.time() - burst_start
        halt.set()
        thread.join(30)
        dispatcher.close()
        done = _delivered(sessions)
    finally:
        stop.set()
        receiver.join(30)
    arrivals = json.loads(arrivals_file.read_text())
    latencies = [at - stored_at[event] for event, at in arrivals if event in stored_at]
    last = max(at for event, at in arrivals if event in stored_at)
    per_s = len(latencies) / (last - t0)
    capacity = burst * subscriptions / burst_s
    return {
        "database": url.split(":")[0].split("+")[0],
        "subscriptions": subscriptions, "alerts_per_s": rate, "seconds": seconds,
        "deliveries": expected, "delivered": done, "received": len(latencies),
        "deliveries_per_s": per_s,
        "latency_p50_ms": 1000 * statistics.median(latencies),
        "latency_p99_ms": 1000 * _percentile(latencies, 0.99),
        "latency_max_ms": 1000 * max(latencies),
        "sustained_seconds": sustained_end - t0,
        "burst_deliveries": burst * subscriptions, "burst_seconds": burst_s,
        "capacity_per_s": capacity,
        "baseline_sequential_per_s": baseline_per_s,
        "outbox_vs_baseline": capacity / baseline_per_s,
        "offered_per_s": rate * subscriptions, "receiver_latency_ms": receiver_latency_ms,
    }  # fmt: skip


def _delivered(sessions: Any) -> int:
    from sqlalchemy import func, select

    from storage.tables import DeliveryRow

    with sessions() as session:
        query = select(func.count()).where(DeliveryRow.status == "delivered")
        return int(session.scalar(query) or 0)
