"""Polled feeds as configuration (a YAML file), their health, and the loop that runs them.

    feeds:
      - name: example-markets          # becomes each record's source
        type: rss                      # rss (RSS or Atom) or json
        url: https://example.com/markets.rss
        kind: news                     # news or social
        interval_s: 300                # poll interval; +-jitter, stretched while failing
        silent_after_s: 3600           # no new item for this long: the feed is 'silent'
        headers: {Authorization: "Bearer ${EXAMPLE_TOKEN}"}   # ${VAR} from the environment
      - name: example-social           # a JSON API: see ingest/jsonapi.py and ingest/examples/
        type: json
        ...

Health per feed (table ``feed_health``): last poll and success, last new item, consecutive errors,
items per minute, and a status: ``ok``, ``failing`` (3 errors in a row or more), ``silent`` (no new
item for ``silent_after_s``). A dead feed must never look like a quiet market: a feed turning
``failing`` or ``silent`` fires an alert (rule ``feed_failing`` or ``feed_silent``, group
``feed:<name>``, family ``feed-health``), resolved when the feed is ``ok`` again. These alerts take
the same road as the risk rules' alerts: stored with their events in the feed-health transaction,
delivered to matching subscriptions, Grafana and Alertmanager, and muted by silences.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import yaml
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from ingest.base import SourceItem
from ingest.jsonapi import JsonApiSource, Mapping, Pagination
from ingest.polled import PolledSource, PollOutcome
from ingest.rss import RssSource
from riskwire.exceptions import RiskwireError
from riskwire.records import FEED_PREFIX, Alert, AlertState, Severity, stable_id
from storage import delivery, repository
from storage.tables import AlertRow, FeedHealthRow

log = logging.getLogger(__name__)
FAILING_AFTER = 3
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class FeedConfigError(RiskwireError):
    """A feeds file that cannot be used, with what is wrong and where."""


def _expand(value: str, where: str) -> str:
    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in os.environ:
            raise FeedConfigError(f"{where}: environment variable {name} is not set")
        return os.environ[name]

    return _VAR.sub(sub, value)


@dataclass(frozen=True)
class Feed:
    source: PolledSource
    silent_after_s: float


def load_feeds(path: Path) -> list[Feed]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise FeedConfigError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("feeds"), list):
        raise FeedConfigError(f"{path}: expected a 'feeds' list")
    feeds, names = [], set()
    for number, entry in enumerate(data["feeds"], 1):
        where = f"{path} feed {number}"
        try:
            feed = _feed(dict(entry), where)
        except (TypeError, ValueError, KeyError) as exc:
            raise FeedConfigError(f"{where}: {exc}") from exc
        if feed.source.name in names:
            raise FeedConfigError(f"{where}: the name {feed.source.name!r} is used twice")
        names.add(feed.source.name)
        feeds.append(feed)
    return feeds


def _feed(entry: dict[str, Any], where: str) -> Feed:
    kind = entry.pop("type", "rss")
    name, url = entry.pop("name"), entry.pop("url")
    interval = float(entry.pop("interval_s", 300))
    if interval <= 0:
        raise ValueError("interval_s must be positive")
    silent_after = float(entry.pop("silent_after_s", max(10 * interval, 3600)))
    common: dict[str, Any] = {
        "kind": entry.pop("kind", "news"),
        "interval_s": interval,
        "jitter": float(entry.pop("jitter", 0.1)),
        "headers": {k: _expand(str(v), where) for k, v in (entry.pop("headers", {}) or {}).items()},
        "max_pages": int(entry.pop("max_pages", 1 if kind in ("rss", "atom") else 3)),
    }
    if kind in ("rss", "atom"):
        source: PolledSource = RssSource(name, _expand(url, where), **common)
    elif kind == "json":
        mapping = Mapping(
            items=entry.pop("items", ""),
            fields=dict(entry.pop("fields")),
            timezone=entry.pop("timezone", None),
        )
        pagination = Pagination(**(entry.pop("pagination", None) or {}))
        source = JsonApiSource(
            name, _expand(url, where), mapping=mapping, pagination=pagination, **common
        )
    else:
        raise ValueError(f"type {kind!r} is not rss, atom or json")
    if entry:
        raise ValueError(f"unknown keys {sorted(entry)}")
    return Feed(source, silent_after)


@dataclass
class Health:
    """One feed's health, updated after every poll."""

    source: str
    kind: str
    url: str
    expected_interval_s: float
    silent_after_s: float
    started_at: datetime
    last_poll_at: datetime | None = None
    last_success_at: datetime | None = None
    last_item_at: datetime | None = None
    consecutive_errors: int = 0
    last_error: str | None = None
    items_total: int = 0
    items_last_poll: int = 0
    items_per_minute: float = 0.0

    def record(self, outcome: PollOutcome, now: datetime) -> str:
        """Take one poll's outcome; returns the status it leaves the feed in."""
        if outcome.error is not None:
            self.consecutive_errors += 1
            self.last_error = outcome.error
        else:
            self.consecutive_errors = 0
            self.last_error = None
            self.last_success_at = now
            new = len(outcome.items)
            if self.last_poll_at is not None:  # items per minute, smoothed over polls
                minutes = max((now - self.last_poll_at).total_seconds() / 60, 1e-6)
                rate = new / minutes
                self.items_per_minute = 0.7 * self.items_per_minute + 0.3 * rate
            self.items_last_poll = new
            self.items_total += new
            if new:
                self.last_item_at = now
        self.last_poll_at = now
        return self.status(now)

    def status(self, now: datetime) -> str:
        if self.consecutive_errors >= FAILING_AFTER:
            return "failing"
        quiet_since = self.last_item_at or self.started_at
        if (now - quiet_since).total_seconds() > self.silent_after_s:
            return "silent"
        return "ok"

    def row(self, now: datetime) -> dict[str, Any]:
        return {
            "source": self.source, "kind": self.kind, "url": self.url, "status": self.status(now),
            "expected_interval_s": self.expected_interval_s, "silent_after_s": self.silent_after_s,
            "last_poll_at": self.last_poll_at, "last_success_at": self.last_success_at,
            "last_item_at": self.last_item_at, "consecutive_errors": self.consecutive_errors,
            "last_error": self.last_error, "items_total": self.items_total,
            "items_last_poll": self.items_last_poll, "items_per_minute": self.items_per_minute,
            "updated_at": now,
        }  # fmt: skip


FEED_FAMILY = "feed-health"


def health_alert(health: Health, status: str, now: datetime) -> Alert:
    """The firing alert for a feed that has just turned ``failing`` or ``silent``."""
    quiet_since = health.last_item_at or health.started_at
    silent_for = (now - quiet_since).total_seconds()
    values = {"consecutive_errors": float(health.consecutive_errors), "silent_for_s": silent_for,
              "items_per_minute": round(health.items_per_minute, 4)}  # fmt: skip
    if status == "failing":
        thresholds = {"consecutive_errors": float(FAILING_AFTER)}
        explanation = (
            f"feed {health.source} failed {health.consecutive_errors} polls in a row "
            f"(last error: {health.last_error}); its silence is not a quiet market"
        )
    else:
        thresholds = {"silent_for_s": health.silent_after_s}
        explanation = (
            f"feed {health.source} has produced no new item for {silent_for:,.0f} s (expected "
            f"within {health.silent_after_s:,.0f} s); its silence is not a quiet market"
        )
    return Alert(
        id=stable_id("feed-health", status, health.source, now.isoformat()),
        rule=f"feed_{status}", ticker=FEED_PREFIX + health.source,
        severity=Severity.CRITICAL if status == "failing" else Severity.WARNING,
        state=AlertState.FIRING, window_start=quiet_since if status == "silent" else now,
        window_end=now, event_time=now, values=values, thresholds=thresholds, evidence=(),
        explanation=explanation, family=FEED_FAMILY,
    )  # fmt: skip


def resolved(alert: Alert, now: datetime, why: str) -> Alert:
    update = {
        "state": AlertState.RESOLVED, "event_time": now, "window_end": now,
        "explanation": f"{alert.explanation}; resolved: {why}",
    }  # fmt: skip
    return alert.model_copy(update=update)


def firing_feed_alerts(session: Session) -> dict[str, Alert]:
    """The feed-health alerts still firing, by feed, so a restarted runner resolves them."""
    rows = session.scalars(
        select(AlertRow).where(
            AlertRow.run_id == "live", AlertRow.state == "firing",
            AlertRow.ticker.startswith(FEED_PREFIX),
        )
    )  # fmt: skip
    return {row.ticker.removeprefix(FEED_PREFIX): repository.alert_of(row) for row in rows}


def health_worst_first(session: Session) -> list[FeedHealthRow]:
    """Every feed's stored health, failing feeds first, then silent ones, then by name."""
    order = {"failing": 0, "silent": 1, "ok": 2}
    rows = session.scalars(select(FeedHealthRow))
    return sorted(rows, key=lambda r: (order.get(r.status, 3), r.source))


def store_health(session: Session, rows: Sequence[dict[str, Any]]) -> None:
    for row in rows:
        session.merge(FeedHealthRow(**row))


class FeedRunner:
    """Polls every feed when it is due, hands new items to ``publish``, records health."""

    def __init__(
        self,
        feeds: Sequence[Feed],
        publish: Callable[[list[SourceItem]], Any],
        sessions: sessionmaker[Session] | None = None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        targets: delivery.Targets | None = None,
    ) -> None:
        self.feeds = list(feeds)
        self.publish = publish
        self.sessions = sessions
        self.clock = clock
        now = clock()
        self.health = {
            f.source.name: Health(
                f.source.name, f.source.kind.value, f.source.url, f.source.schedule.interval_s,
                f.silent_after_s, started_at=now,
            )
            for f in self.feeds
        }  # fmt: skip
        self.due = {f.source.name: now for f in self.feeds}
        self.status = {f.source.name: "ok" for f in self.feeds}
        self.targets = targets or delivery.Targets()
        self.alerts: dict[str, Alert] = {}  # firing feed-health alerts, by feed
        if sessions is not None:
            with sessions() as session:
                self.alerts = firing_feed_alerts(session)
        self.client = httpx.Client(follow_redirects=True)

    def poll_due(self) -> int:
        """Poll the feeds that are due; returns how many items they produced."""
        produced = 0
        rows = []
        events: list[Alert] = []
        for feed in self.feeds:
            source = feed.source
            now = self.clock()
            if self.due[source.name] > now:
                continue
            outcome = source.poll(self.client)
            try:
                if outcome.items:
                    self.publish(outcome.items)
                    produced += len(outcome.items)
            except Exception as exc:  # the broker did not take them: they come again next poll
                log.error("feed %s: %d items not published (%s); they are fetched again",
                          source.name, len(outcome.items), exc)  # fmt: skip
                outcome.error = f"publishing failed: {exc}"
            else:
                source.taken(outcome)
            health = self.health[source.name]
            status = health.record(outcome, self.clock())
            delay = source.schedule.next_delay(health.consecutive_errors)
            self.due[source.name] = self.clock() + timedelta(seconds=delay)
            if status != self.status[source.name]:
                level = logging.INFO if status == "ok" else logging.WARNING
                log.log(level, "feed %s is %s%s", source.name, status,
                        f": {health.last_error}" if health.last_error else "")  # fmt: skip
                self.status[source.name] = status
            events += self._alerts(source.name, status, self.clock())
            rows.append(health.row(self.clock()))
        now = self.clock()
        for name, health in self.health.items():  # silence grows without any poll
            if health.status(now) != self.status[name]:
                self.status[name] = health.status(now)
                log.warning("feed %s is %s", name, self.status[name])
                events += self._alerts(name, self.status[name], now)
                rows.append(health.row(now))
        if (rows or events) and self.sessions is not None:
            with self.sessions.begin() as session:
                store_health(session, rows)
                repository.upsert_alerts(session, events)
                delivery.record_alert_events(session, events, self.targets, now)
        return produced

    def _alerts(self, name: str, status: str, now: datetime) -> list[Alert]:
        """Fire when a feed turns failing or silent, resolve when it is ok (or turns the other)."""
        current = self.alerts.get(name)
        wanted = None if status == "ok" else f"feed_{status}"
        if current is not None and current.rule == wanted:
            return []
        health = self.health[name]
        if current is not None and wanted is None:
            # one restored from before a restart stays until the feed shows it is back: a
            # success for a failing feed, a new item for a silent one
            back = health.last_success_at if current.rule == "feed_failing" else health.last_item_at
            if back is None:
                return []
        out = []
        if current is not None:
            out.append(resolved(current, now, f"the feed is {status}"))
            del self.alerts[name]
        if wanted is not None:
            self.alerts[name] = health_alert(health, status, now)
            out.append(self.alerts[name])
        return out

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                self.poll_due()
            except Exception:  # a broken database must not end the polling
                log.exception("ingest round failed")
            wait = min((d - self.clock()).total_seconds() for d in self.due.values())
            stop.wait(max(0.05, min(wait, 5.0)))

    def close(self) -> None:
        self.client.close()
