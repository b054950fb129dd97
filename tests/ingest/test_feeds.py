"""Polled feeds against a local HTTP server serving fixture feeds: RSS, Atom, a paginated JSON API
(pages and cursors), a feed answering 500, one serving malformed XML, one that goes silent and one
that answers 304 to a conditional GET. Health is recorded per feed."""

from __future__ import annotations

import itertools
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from sqlalchemy import select

from ingest.feeds import FeedConfigError, FeedRunner, load_feeds
from ingest.jsonapi import JsonApiSource, Mapping, Pagination, extract
from ingest.rss import RssSource
from riskwire.records import DeadLetter, RawRecord
from storage import make_engine, session_factory, upgrade
from storage.tables import FeedHealthRow
from streams.pipeline import normalise

FEEDS = Path(__file__).resolve().parents[1] / "fixtures" / "feeds"
Handler = Callable[[str, dict[str, list[str]], dict[str, str]], tuple[int, dict[str, str], bytes]]


class FeedServer:
    """Routes path -> handler(path, query, headers) -> (status, headers, body); counts requests."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.hits: list[tuple[str, dict[str, str]]] = []
        owner = self

        class Request(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                headers = dict(self.headers.items())
                owner.hits.append((self.path, headers))
                handler = owner.routes.get(parts.path)
                if handler is None:
                    status, extra, body = 404, {}, b"no such feed"
                else:
                    status, extra, body = handler(parts.path, parse_qs(parts.query), headers)
                self.send_response(status)
                for name, value in extra.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Request)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def static(name: str, content_type: str, etag: str | None = None) -> Handler:
    body = (FEEDS / name).read_bytes()

    def handle(path: str, query: dict, headers: dict) -> tuple[int, dict[str, str], bytes]:
        if etag and headers.get("If-None-Match") == etag:
            return 304, {"ETag": etag}, b""
        extra = {"Content-Type": content_type}
        if etag:
            extra["ETag"] = etag
            extra["Last-Modified"] = "Mon, 02 Nov 2026 12:00:00 GMT"
        return 200, extra, body

    return handle


POSTS = [
    {"id": str(100 - i), "body": f"$ACME post {i}", "created_at": f"2026-11-02T10:{i:02d}:00Z",
     "symbols": [{"symbol": "ACME"}], "user": {"username": f"u{i}"}}
    for i in range(7)
]  # fmt: skip


def paged_api(path: str, query: dict, headers: dict) -> tuple[int, dict[str, str], bytes]:
    page = int(query.get("page", ["1"])[0])
    chunk = POSTS[(page - 1) * 3 : page * 3]
    return 200, {"Content-Type": "application/json"}, json.dumps({"messages": chunk}).encode()


def cursor_api(path: str, query: dict, headers: dict) -> tuple[int, dict[str, str], bytes]:
    start = int(query.get("after", ["0"])[0])
    chunk = POSTS[start : start + 3]
    more = start + 3 < len(POSTS)
    body = {"data": {"children": chunk, "after": str(start + 3) if more else None}}
    return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()


def failing(path: str, query: dict, headers: dict) -> tuple[int, dict[str, str], bytes]:
    return 500, {}, b"upstream exploded"


@pytest.fixture
def server() -> Iterator[FeedServer]:
    feeds = FeedServer(
        {
            "/markets.rss": static("markets.rss", "application/rss+xml", etag='"v1"'),
            "/newsroom.atom": static("newsroom.atom", "application/atom+xml"),
            "/malformed.rss": static("malformed.rss", "application/rss+xml"),
            "/api/page": paged_api,
            "/api/cursor": cursor_api,
            "/broken": failing,
        }
    )
    yield feeds
    feeds.close()


def records(items: list) -> list[RawRecord]:
    assert all(isinstance(i, RawRecord) for i in items), items
    return items


def test_rss_items_become_raw_records_that_normalise(server: FeedServer) -> None:
    source = RssSource("markets", f"{server.url}/markets.rss")
    with httpx.Client() as client:
        outcome = source.poll(client)
    assert outcome.error is None
    first, second = records(outcome.items)
    assert first.source == "markets" and first.payload["id"] == "markets-1001"
    assert first.payload["published_at"] == "2026-11-02T08:15:00+00:00"  # +0100 in the feed
    assert first.payload["original"]["title"] == "$ACME shares slide after profit warning"
    doc = normalise(first)
    assert doc.text == "ACME Corp cut its full-year outlook."  # HTML stripped
    assert [t.ticker for t in doc.tickers] == ["ACME"]
    assert normalise(second).url == "https://news.example.com/markets/beta-contract"


def test_atom_entries_are_read_too(server: FeedServer) -> None:
    source = RssSource("gamma", f"{server.url}/newsroom.atom")
    with httpx.Client() as client:
        (item,) = records(source.poll(client).items)
    assert item.payload["published_at"] == "2026-11-02T11:30:00+00:00"
    assert item.payload["url"] == "https://gamma.example.com/news/q3"
    assert [t.ticker for t in normalise(item).tickers] == ["GAMA"]


def test_a_conditional_get_answered_304_produces_nothing_again(server: FeedServer) -> None:
    source = RssSource("markets", f"{server.url}/markets.rss")
    with httpx.Client() as client:
        first = source.poll(client)
        assert len(first.items) == 2
        source.taken(first)  # published
        again = source.poll(client)
    assert again.not_modified and again.items == [] and again.error is None
    _, headers = server.hits[-1]
    assert headers["If-None-Match"] == '"v1"'
    assert headers["If-Modified-Since"] == "Mon, 02 Nov 2026 12:00:00 GMT"


def test_items_seen_before_are_not_produced_twice(server: FeedServer) -> None:
    source = RssSource("gamma", f"{server.url}/newsroom.atom")  # no validators: always 200
    with httpx.Client() as client:
        first = source.poll(client)
        assert len(first.items) == 1
        source.taken(first)
        assert source.poll(client).items == []


def test_items_not_yet_published_come_again_and_the_feed_is_asked_for_them_again(
    server: FeedServer,
) -> None:
    """Until the runner says a poll's items were published, the source neither remembers them
    nor sends the validators that would have the server answer 304: a failed publish loses none."""
    source = RssSource("markets", f"{server.url}/markets.rss")
    with httpx.Client() as client:
        first = source.poll(client)
        again = source.poll(client)
        _, headers = server.hits[-1]
        assert "If-None-Match" not in headers and "If-Modified-Since" not in headers
        assert [i.payload for i in again.items] == [i.payload for i in first.items]
        assert len(again.items) == 2
        source.taken(again)
        assert source.poll(client).not_modified


def test_a_publish_that_fails_leaves_the_items_to_the_next_poll(
    server: FeedServer, tmp_path: Path
) -> None:
    """The broker refusing a publish is the feed's error for that round (its health says why);
    the items come again when the feed is next due, and are published then."""
    from ingest.producer import PublishError

    published: list[Any] = []
    refuse = [True]

    def publish(items: list[Any]) -> None:
        if refuse[0]:
            raise PublishError("the broker did not take 2 of 2 records: KafkaTimeoutError")
        published.extend(items)

    clock = Clock()
    feeds = [
        f for f in load_feeds(write_config(tmp_path, server.url)) if f.source.name == "markets"
    ]
    runner = FeedRunner(feeds, publish, None, clock)
    try:
        runner.poll_due()
        health = runner.health["markets"]
        assert published == [] and health.consecutive_errors == 1
        assert "publishing failed" in (health.last_error or "")
        refuse[0] = False
        clock.now = runner.due["markets"]
        runner.poll_due()
        assert len(published) == 2 and health.consecutive_errors == 0
        clock.now = runner.due["markets"]
        runner.poll_due()  # now remembered: the server is asked conditionally, answers 304
        assert len(published) == 2 and server.hits[-1][1]["If-None-Match"] == '"v1"'
    finally:
        runner.close()


def test_a_paginated_json_api_is_read_page_by_page(server: FeedServer) -> None:
    mapping = Mapping(
        items="messages",
        fields={"id": "id", "text": "body", "published_at": "created_at",
                "tickers": "symbols[].symbol", "author": "user.username"},
    )  # fmt: skip
    source = JsonApiSource(
        "twits", f"{server.url}/api/page", mapping=mapping,
        pagination=Pagination(type="page", param="page"), max_pages=10, kind="social",
    )  # fmt: skip
    with httpx.Client() as client:
        outcome = source.poll(client)
    items = records(outcome.items)
    assert [i.payload["id"] for i in items] == [p["id"] for p in POSTS]
    assert outcome.pages == 4  # three full pages, then an empty one ends it
    assert items[0].payload["tickers"] == ["ACME"] and items[0].payload["author"] == "u0"
    assert items[0].payload["original"] == POSTS[0]
    doc = normalise(items[0])
    assert doc.kind == "social" and [t.ticker for t in doc.tickers] == ["ACME"]


def test_a_cursor_paginated_api_follows_the_cursor_until_it_ends(server: FeedServer) -> None:
    mapping = Mapping(items="data.children", fields={"id": "id", "text": "body"})
    source = JsonApiSource(
        "reddit-like", f"{server.url}/api/cursor", mapping=mapping,
        pagination=Pagination(type="cursor", next="data.after", param="after"), max_pages=10,
    )  # fmt: skip
    with httpx.Client() as client:
        outcome = source.poll(client)
    assert [i.payload["id"] for i in records(outcome.items)] == [p["id"] for p in POSTS]
    assert [path for path, _ in server.hits] == [
        "/api/cursor", "/api/cursor?after=3", "/api/cursor?after=6"
    ]  # fmt: skip


def test_json_paths_map_lists_and_index_from_the_end() -> None:
    data = {"a": [{"b": 1}, {"b": 2}, {"c": 3}], "d": {"e": "x"}}
    assert extract(data, "a[].b") == [1, 2]
    assert extract(data, "a.-1.c") == 3 and extract(data, "a.0.b") == 1
    assert extract(data, "d.e") == "x" and extract(data, "d.missing") is None
    assert extract([{"id": 1}, {"id": 2}], "-1.id") == 2


@pytest.mark.parametrize(
    ("path", "reason"),
    [("/broken", "HTTP 500"), ("/malformed.rss", "malformed feed"), ("/nowhere", "HTTP 404")],
)
def test_failures_are_reported_not_raised(server: FeedServer, path: str, reason: str) -> None:
    source = RssSource("bad", f"{server.url}{path}")
    with httpx.Client() as client:
        outcome = source.poll(client)
    assert outcome.items == [] and outcome.error is not None and reason in outcome.error


def test_an_unreachable_feed_is_an_error_too() -> None:
    source = RssSource("gone", "http://127.0.0.1:9/feed.rss", timeout_s=2)
    with httpx.Client() as client:
        outcome = source.poll(client)
    assert outcome.error is not None and "ConnectError" in outcome.error


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 2, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


def write_config(tmp_path: Path, url: str, **overrides: object) -> Path:
    feeds = [
        {"name": "markets", "type": "rss", "url": f"{url}/markets.rss", "interval_s": 60,
         "silent_after_s": 3600},
        {"name": "broken", "type": "rss", "url": f"{url}/broken", "interval_s": 60},
        {"name": "malformed", "type": "rss", "url": f"{url}/malformed.rss", "interval_s": 60},
        {"name": "twits", "type": "json", "url": f"{url}/api/page", "kind": "social",
         "interval_s": 60, "items": "messages", "fields": {"id": "id", "text": "body"},
         "pagination": {"type": "page", "param": "page"}, "max_pages": 10},
    ]  # fmt: skip
    path = tmp_path / "feeds.yaml"
    path.write_text(json.dumps({"feeds": feeds, **overrides}), encoding="utf-8")
    return path


def test_the_runner_polls_when_due_and_records_each_feeds_health(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    upgrade(database_url)
    sessions = session_factory(make_engine(database_url))
    clock = Clock()
    published: list[Any] = []
    runner = FeedRunner(
        load_feeds(write_config(tmp_path, server.url)), published.extend, sessions, clock
    )
    try:
        errors = lambda name: runner.health[name].consecutive_errors  # noqa: E731
        for _ in range(100):  # time moves to whichever feed is due next (failing ones back off)
            clock.now = min(runner.due.values())
            runner.poll_due()
            if errors("broken") >= 3 and errors("malformed") >= 3:
                break
        assert (clock.now - Clock().now).total_seconds() < 3600
        assert len([i for i in published if isinstance(i, RawRecord)]) == 2 + len(POSTS)
        assert not [i for i in published if isinstance(i, DeadLetter)]
        assert runner.status == {
            "markets": "ok", "broken": "failing", "malformed": "failing", "twits": "ok"
        }  # fmt: skip
        with sessions() as session:
            rows = {r.source: r for r in session.scalars(select(FeedHealthRow))}
        assert rows["broken"].consecutive_errors >= 3 and "HTTP 500" in rows["broken"].last_error
        assert rows["markets"].items_total == 2 and rows["markets"].last_success_at is not None
        assert rows["twits"].status == "ok" and rows["twits"].items_total == len(POSTS)

        # the markets feed keeps answering 304: after silent_after_s with nothing new, 'silent'
        clock.now = Clock().now + timedelta(seconds=3700)
        runner.poll_due()
        assert runner.status["markets"] == "silent"
        with sessions() as session:
            assert session.get(FeedHealthRow, "markets").status == "silent"
    finally:
        runner.close()


def test_failing_feeds_back_off_exponentially(server: FeedServer, tmp_path: Path) -> None:
    clock = Clock()
    runner = FeedRunner(load_feeds(write_config(tmp_path, server.url)), lambda items: None,
                        None, clock)  # fmt: skip
    try:
        delays = []
        for _ in range(4):
            clock.now = runner.due["broken"]
            runner.poll_due()
            delays.append((runner.due["broken"] - clock.now).total_seconds())
        assert all(b > a for a, b in itertools.pairwise(delays))
        assert delays[-1] >= 60 * 2**4 * 0.9
    finally:
        runner.close()


@pytest.mark.parametrize(
    ("feeds", "reason"),
    [
        ([{"name": "a", "type": "gopher", "url": "x"}], "not rss, atom or json"),
        ([{"name": "a", "url": "x", "colour": "red"}], "unknown keys"),
        ([{"name": "a", "url": "x"}, {"name": "a", "url": "y"}], "used twice"),
        ([{"name": "a", "type": "json", "url": "x", "fields": {"body": "b"}}], "unknown fields"),
        ([{"name": "a", "url": "x", "headers": {"Authorization": "${NO_SUCH_VAR_X}"}}], "not set"),
        ([{"name": "a", "type": "json", "url": "x", "fields": {"text": "t"},
           "pagination": {"type": "cursor"}}], "needs 'param'"),
    ],
)  # fmt: skip
def test_bad_feed_files_are_refused_with_the_reason(
    tmp_path: Path, feeds: list[dict[str, Any]], reason: str
) -> None:
    path = tmp_path / "feeds.yaml"
    path.write_text(json.dumps({"feeds": feeds}), encoding="utf-8")
    with pytest.raises(FeedConfigError, match=reason):
        load_feeds(path)


def test_the_shipped_example_configurations_load(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASTODON_TOKEN", "t")
    examples = sorted((Path(__file__).resolve().parents[2] / "ingest" / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    for path in examples:
        assert load_feeds(path), path.name


def test_feed_health_is_served_by_the_api_failing_first(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    from fastapi.testclient import TestClient

    from riskwire.api import create_api
    from riskwire.settings import load_settings

    upgrade(database_url)
    sessions = session_factory(make_engine(database_url))
    clock = Clock()
    runner = FeedRunner(load_feeds(write_config(tmp_path, server.url)), lambda items: None,
                        sessions, clock)  # fmt: skip
    try:
        for _ in range(40):
            clock.now = min(runner.due.values())
            runner.poll_due()
    finally:
        runner.close()
    settings = load_settings(database_url=database_url, data_dir=tmp_path, deliver_in_api=False)
    with TestClient(create_api(settings)) as client:
        feeds = client.get("/feeds").json()
    assert [f["source"] for f in feeds][:2] == ["broken", "malformed"]
    assert {f["source"]: f["status"] for f in feeds}["broken"] == "failing"
    assert feeds[0]["consecutive_errors"] >= 3 and "HTTP 500" in feeds[0]["last_error"]


@pytest.mark.integration
@pytest.mark.slow
def test_a_live_feed_flows_through_the_same_pipeline_as_files(
    server: FeedServer, tmp_path: Path, broker: Any, sqlite_url: str
) -> None:
    """RSS items polled from a feed go through the broker and a worker into the database, linked
    to their companies, exactly like records from a file."""
    from ingest import RawProducer
    from riskwire.worker import spawn_worker, stop_worker
    from storage.tables import DocumentRow, DocumentTickerRow
    from tests.kafka_helpers import stream_settings, wait_drained

    upgrade(sqlite_url)
    settings = stream_settings(
        "feed", broker.bootstrap, sqlite_url, tmp_path, score_batch_wait_s=0.2,
    )  # fmt: skip
    feeds = load_feeds(write_config(tmp_path, server.url))[:1]  # the markets RSS feed
    worker = spawn_worker(settings, tmp_path / "worker.log")
    try:
        with RawProducer(broker.bootstrap, settings.topics) as producer:
            runner = FeedRunner(feeds, producer.publish, None, Clock())
            assert runner.poll_due() == 2
            runner.close()
        topics = settings.topics
        wait_drained(broker.bootstrap, settings.consumer_group,
                     [topics.raw_news, topics.raw_social, topics.docs, topics.scored])  # fmt: skip
    finally:
        assert stop_worker(worker) == 0, (tmp_path / "worker.log").read_text()[-3000:]
    sessions = session_factory(make_engine(sqlite_url))
    with sessions() as session:
        docs = session.scalars(select(DocumentRow).order_by(DocumentRow.published_at)).all()
        links = {(d.document_id, d.ticker) for d in session.scalars(select(DocumentTickerRow))}
    assert [d.source for d in docs] == ["markets", "markets"]
    assert docs[0].url == "https://news.example.com/markets/acme-warning" and docs[0].lang == "en"
    assert {t for _, t in links} == {"ACME", "BETA"}


def test_failing_and_silent_feeds_raise_alerts_that_resolve_when_they_recover(
    server: FeedServer, tmp_path: Path, database_url: str
) -> None:
    """A dead feed is an alert with a lifecycle and deliveries, never a quiet market."""
    from riskwire.records import Alert
    from storage.delivery import create_silence
    from storage.tables import AlertEventRow, AlertRow, DeliveryRow
    from tests.delivery.conftest import add_key, add_subscription

    upgrade(database_url)
    sessions = session_factory(make_engine(database_url))
    add_key(sessions)  # a subscriber to feed health
    add_subscription(sessions, "ops", "http://ops.invalid/hook",
                     rules=["feed_failing", "feed_silent"])  # fmt: skip
    clock = Clock()
    config = write_config(tmp_path, server.url)
    runner = FeedRunner(load_feeds(config), lambda items: None, sessions, clock)

    def alerts() -> dict[tuple[str, str], Alert]:
        from storage.repository import alert_of

        with sessions() as session:
            return {(r.ticker, r.rule): alert_of(r) for r in session.scalars(select(AlertRow))}

    def states() -> dict[tuple[str, str], str]:
        with sessions() as session:
            return {(r.ticker, r.rule): r.state for r in session.scalars(select(AlertRow))}

    try:
        for _ in range(100):
            clock.now = min(runner.due.values())
            runner.poll_due()
            if runner.status["broken"] == "failing" and runner.status["malformed"] == "failing":
                break
        fired = alerts()
        assert set(fired) == {("feed:broken", "feed_failing"), ("feed:malformed", "feed_failing")}
        broken = fired[("feed:broken", "feed_failing")]
        assert broken.severity == "critical" and broken.family == "feed-health"
        assert broken.values["consecutive_errors"] >= 3 == broken.thresholds["consecutive_errors"]
        assert "HTTP 500" in broken.explanation and "not a quiet market" in broken.explanation
        with sessions() as session:
            events = session.scalars(select(AlertEventRow)).all()
            assert {e.state for e in events} == {"firing"} and len(events) == 2
            deliveries = session.scalars(select(DeliveryRow)).all()
            assert {d.subscription_id for d in deliveries} == {"ops"} and len(deliveries) == 2

        # markets (and twits) stay quiet past silent_after_s; a silence mutes the markets one
        with sessions.begin() as session:
            create_silence(session, ticker="feed:markets", rule=None, family=None,
                           duration=timedelta(days=1), comment="known outage", created_by="ops",
                           now=clock.now)  # fmt: skip
        clock.now = Clock().now + timedelta(seconds=3700)
        runner.poll_due()
        assert states()[("feed:markets", "feed_silent")] == "firing"
        with sessions() as session:
            muted = session.scalars(
                select(AlertEventRow).where(AlertEventRow.ticker == "feed:markets")
            ).one()
            assert muted.suppressed is not None and "known outage" in muted.suppressed
            queued = {d.event_id for d in session.scalars(select(DeliveryRow))}
            assert muted.id not in queued  # stored, nobody notified

        # a restarted runner picks the firing alerts up, and resolves one once its feed is back
        runner.close()
        server.routes["/broken"] = static("markets.rss", "application/rss+xml")
        runner = FeedRunner(load_feeds(config), lambda items: None, sessions, clock)
        assert set(runner.alerts) == {"broken", "malformed", "markets", "twits"}
        runner.poll_due()
        assert states()[("feed:broken", "feed_failing")] == "resolved"
        assert states()[("feed:malformed", "feed_failing")] == "firing"  # still failing
        with sessions() as session:
            resolved = session.scalars(
                select(AlertEventRow).where(AlertEventRow.state == "resolved")
            ).all()
        # markets and twits hand a fresh runner their items again: not silent any more
        assert {e.ticker for e in resolved} == {"feed:broken", "feed:markets", "feed:twits"}
        assert alerts()[("feed:broken", "feed_failing")].id == broken.id
    finally:
        runner.close()
