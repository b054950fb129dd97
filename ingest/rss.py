"""RSS and Atom feeds (parsed by ``feedparser``), polled with conditional GET.

Each entry becomes a raw record whose payload holds the fields normalisation reads (title, text,
url, published_at, id) and the entry as the feed gave it (``original``).
"""

from __future__ import annotations

import calendar
import time
from datetime import UTC, datetime
from typing import Any

import feedparser

from ingest.polled import FetchError, PolledSource

BENIGN = (feedparser.CharacterEncodingOverride, feedparser.NonXMLContentType)


def _plain(value: Any) -> Any:
    """An entry's value as JSON: parsed time tuples dropped (their text form is kept)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items() if not isinstance(v, time.struct_time)}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value if not isinstance(v, time.struct_time)]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def _when(entry: Any) -> str | None:
    for key in ("published_parsed", "updated_parsed", "created_parsed"):
        parsed = entry.get(key)
        if parsed:
            return datetime.fromtimestamp(calendar.timegm(parsed), tz=UTC).isoformat()
    return None


class RssSource(PolledSource):
    """An RSS 2.0, RSS 1.0 or Atom feed."""

    def parse(self, body: bytes, url: str) -> tuple[list[dict[str, Any]], str | None]:
        feed = feedparser.parse(body)
        problem = feed.get("bozo_exception")
        # a wrong encoding declaration is harmless; XML that is not well formed is not a feed
        # (feedparser would still hand back half-parsed entries), and is reported as the error
        if feed.bozo and not isinstance(problem, BENIGN):
            raise FetchError(f"malformed feed at {url}: {problem or 'not a feed'}")
        payloads = []
        for entry in feed.entries:
            content = entry.get("content") or []
            text = content[0].get("value") if content else None
            payloads.append(
                {
                    "id": entry.get("id") or entry.get("link"),
                    "title": entry.get("title"),
                    "text": text or entry.get("summary") or entry.get("title"),
                    "url": entry.get("link"),
                    "published_at": _when(entry),
                    "author": entry.get("author"),
                    "feed": feed.feed.get("title"),
                    "original": _plain(dict(entry)),
                }
            )
        return payloads, None
