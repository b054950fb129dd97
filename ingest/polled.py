"""What polled HTTP sources share: conditional GET, a poll schedule with jitter and backoff on errors,
items seen before not produced again, and per-feed health.

A source implements ``parse(body, url) -> (items, next_url)``; ``poll()`` fetches, follows pages, and
returns what it found together with how the fetch went, which the runner records as the feed's
health. Only once the items are published does the runner tell the source (``taken``), which then
remembers them and the feed's validators: a publish that fails leaves them to come again.
"""

from __future__ import annotations

import json
import random
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx

from ingest.base import FeedSource, SourceItem
from riskwire import __version__
from riskwire.recent import RecentIds
from riskwire.records import DeadLetter, Kind, RawRecord

STAGE = "ingest"
USER_AGENT = f"riskwire/{__version__} (+https://github.com/riskwire)"


class FetchError(Exception):
    """A fetch that failed as a whole (network, HTTP status, unparseable body), with the reason."""


@dataclass
class PollOutcome:
    """One poll: the new items, whether the server said nothing changed, or why it failed; and
    what the source learns from it once the items are published (``PolledSource.taken``)."""

    items: list[SourceItem] = field(default_factory=list)
    not_modified: bool = False
    error: str | None = None
    pages: int = 0
    keys: dict[str, None] = field(default_factory=dict)  # the new items' ids, in order
    etag: str | None = None  # the first page's validators, for the next conditional GET
    last_modified: str | None = None


@dataclass
class Schedule:
    """When a feed is next due: its interval with jitter, stretched exponentially while it fails."""

    interval_s: float
    jitter: float = 0.1
    max_backoff_s: float = 3600.0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self, consecutive_errors: int) -> float:
        base = self.interval_s
        if consecutive_errors:
            base = min(self.max_backoff_s, self.interval_s * 2**consecutive_errors)
        return max(0.0, base * (1 + self.rng.uniform(-self.jitter, self.jitter)))


class PolledSource(FeedSource, ABC):
    """An HTTP feed polled on a schedule. ``parse`` turns one response body into payloads."""

    def __init__(
        self,
        name: str,
        url: str,
        kind: Kind = Kind.NEWS,
        interval_s: float = 300.0,
        jitter: float = 0.1,
        headers: dict[str, str] | None = None,
        max_pages: int = 1,
        timeout_s: float = 20.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        remember: int = 10_000,
    ) -> None:
        self.name = name
        self.url = url
        self.kind = Kind(kind)
        self.schedule = Schedule(interval_s, jitter)
        self.headers = {"User-Agent": USER_AGENT, **(headers or {})}
        self.max_pages = max_pages
        self.timeout_s = timeout_s
        self.clock = clock
        self.etag: str | None = None
        self.last_modified: str | None = None
        self._seen = RecentIds(remember)

    @abstractmethod
    def parse(self, body: bytes, url: str) -> tuple[list[dict[str, Any]], str | None]:
        """Payloads of the items in one response, and the URL of the next page (or None).
        Raises FetchError when the body cannot be read at all."""

    def item_id(self, payload: dict[str, Any]) -> str:
        for key in ("id", "guid", "url", "link"):
            value = payload.get(key)
            if isinstance(value, str | int) and str(value):
                return str(value)
        return json.dumps(payload, sort_keys=True, default=str)

    def poll(self, client: httpx.Client) -> PollOutcome:
        """Fetch the feed (following up to ``max_pages`` pages); items seen before are skipped."""
        outcome = PollOutcome()
        url: str | None = self.url
        while url is not None and outcome.pages < self.max_pages:
            headers = dict(self.headers)
            first = outcome.pages == 0
            if first and self.etag:
                headers["If-None-Match"] = self.etag
            if first and self.last_modified:
                headers["If-Modified-Since"] = self.last_modified
            try:
                answer = client.get(url, headers=headers, timeout=self.timeout_s)
            except httpx.HTTPError as exc:
                outcome.error = f"{type(exc).__name__}: {exc}"
                return outcome
            if first and answer.status_code == 304:
                outcome.not_modified = True
                return outcome
            if not answer.is_success:
                outcome.error = f"HTTP {answer.status_code} from {url}"
                return outcome
            if first:  # validators of the feed's first page, for the next conditional GET
                outcome.etag = answer.headers.get("ETag") or self.etag
                outcome.last_modified = answer.headers.get("Last-Modified") or self.last_modified
            try:
                payloads, url = self.parse(answer.content, url)
            except FetchError as exc:
                outcome.error = str(exc)
                return outcome
            outcome.pages += 1
            fetched = self.clock()
            before = len(outcome.items)
            for payload in payloads:
                outcome.items.extend(self._new(payload, fetched, outcome))
            if len(outcome.items) == before:  # nothing new here: older pages hold nothing new
                break
        return outcome

    def taken(self, outcome: PollOutcome) -> None:
        """The poll's items were published: remember them, and the feed's validators, so the
        next poll neither produces them again nor has the server send them. Until then they come
        again (a publish that failed loses nothing)."""
        self._seen.remember(outcome.keys)
        if outcome.pages:
            self.etag, self.last_modified = outcome.etag, outcome.last_modified

    def _new(
        self, payload: dict[str, Any], fetched: datetime, outcome: PollOutcome
    ) -> Iterator[SourceItem]:
        key = self.item_id(payload)
        if key in outcome.keys or not self._seen.is_new(key):
            return
        outcome.keys[key] = None
        try:
            yield RawRecord(source=self.name, kind=self.kind, fetched_at=fetched, payload=payload)
        except ValueError as exc:  # a payload a record cannot hold
            original = json.dumps(payload, default=str)[:100_000]
            yield DeadLetter.of(STAGE, f"{self.name}: {exc}", original, occurred_at=fetched,
                                topic=self.name)  # fmt: skip

    def read(self) -> Iterator[SourceItem]:
        """One poll, as a plain source (``riskwire ingest run --once``)."""
        with httpx.Client(follow_redirects=True) as client:
            outcome = self.poll(client)
        if outcome.error:
            raise FetchError(f"{self.name}: {outcome.error}")
        yield from outcome.items
        self.taken(outcome)  # every item was handed on
