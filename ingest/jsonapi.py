"""A generic JSON HTTP API source: where the items are, which field is which, and how to page are
configuration, so StockTwits-, Reddit- and Mastodon-style APIs need no code (examples in
``ingest/examples/``).

Paths are dotted (``data.children``); ``[]`` maps over a list (``symbols[].symbol`` gives every
symbol) and a number indexes one (``media.0.url``; ``-1`` is the last). Pagination is ``page`` (a
page-number parameter), ``cursor`` (a value from the body sent back as a parameter) or ``link``
(the next page's URL, from the body).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from ingest.polled import FetchError, PolledSource

FIELDS = ("id", "title", "text", "url", "published_at", "tickers", "author", "lang")


def extract(data: Any, path: str) -> Any:
    """The value at a dotted path; None where the path leads nowhere."""
    if path in ("", "."):
        return data
    head, _, rest = path.partition(".")
    if head.endswith("[]"):
        key = head[:-2]
        values = data.get(key) if key and isinstance(data, dict) else data
        if not isinstance(values, list):
            return None
        found = [extract(v, rest) if rest else v for v in values]
        return [v for v in found if v is not None]
    if isinstance(data, dict):
        value = data.get(head)
    elif (
        isinstance(data, list)
        and re.fullmatch(r"-?\d+", head)
        and -len(data) <= int(head) < len(data)
    ):
        value = data[int(head)]  # -1: the last
    else:
        return None
    return extract(value, rest) if rest else value


@dataclass(frozen=True)
class Pagination:
    type: str = "none"  # none | page | cursor | link
    param: str | None = None  # the query parameter a page number or cursor goes in
    next: str | None = None  # path of the cursor or next URL in the body
    start: int = 1  # first page number

    def __post_init__(self) -> None:
        if self.type not in ("none", "page", "cursor", "link"):
            raise ValueError(f"pagination type {self.type!r} is not none, page, cursor or link")
        if self.type in ("page", "cursor") and not self.param:
            raise ValueError(f"{self.type} pagination needs 'param'")
        if self.type in ("cursor", "link") and not self.next:
            raise ValueError(f"{self.type} pagination needs 'next' (a path in the body)")


def with_param(url: str, name: str, value: Any) -> str:
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != name]
    query.append((name, str(value)))
    return urlunsplit(parts._replace(query=urlencode(query)))


@dataclass
class Mapping:
    items: str = ""  # path of the list of items ("" = the body is the list)
    fields: dict[str, str] = field(default_factory=dict)  # riskwire field -> path in an item
    timezone: str | None = None  # the zone of times the API gives without an offset

    def local_times(self, payload: dict[str, Any]) -> None:
        """Give times without an offset this mapping's zone (else normalise refuses them)."""
        value = payload.get("published_at")
        if self.timezone is None or not isinstance(value, str):
            return
        try:
            parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError:
            return  # normalise says what is wrong with it
        if parsed.tzinfo is None:
            payload["published_at"] = parsed.replace(tzinfo=ZoneInfo(self.timezone)).isoformat()

    def __post_init__(self) -> None:
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(f"unknown timezone {self.timezone!r}") from None
        unknown = set(self.fields) - set(FIELDS)
        if unknown:
            raise ValueError(f"unknown fields {sorted(unknown)}; map any of {', '.join(FIELDS)}")
        if "text" not in self.fields and "title" not in self.fields:
            raise ValueError("map at least 'text' or 'title'")


class JsonApiSource(PolledSource):
    def __init__(
        self, *args: Any, mapping: Mapping, pagination: Pagination | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self.mapping = mapping
        self.pagination = pagination or Pagination()
        self._page = self.pagination.start

    def poll(self, client: Any) -> Any:
        self._page = self.pagination.start
        if self.pagination.type == "page" and self.pagination.param:
            self.url = with_param(self.url, self.pagination.param, self._page)
        return super().poll(client)

    def parse(self, body: bytes, url: str) -> tuple[list[dict[str, Any]], str | None]:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise FetchError(f"{url} did not answer JSON: {exc}") from exc
        items = extract(data, self.mapping.items)
        if not isinstance(items, list):
            raise FetchError(f"no list of items at {self.mapping.items!r} in the answer of {url}")
        payloads = []
        for item in items:
            payload: dict[str, Any] = {
                name: extract(item, path) for name, path in self.mapping.fields.items()
            }
            self.mapping.local_times(payload)
            payload["original"] = item
            payloads.append({k: v for k, v in payload.items() if v is not None})
        return payloads, self._next(data, url, bool(items))

    def _next(self, data: Any, url: str, any_items: bool) -> str | None:
        kind, param = self.pagination.type, self.pagination.param
        if kind == "page" and any_items and param:
            self._page += 1
            return with_param(url, param, self._page)
        if kind == "cursor" and param and self.pagination.next:
            cursor = extract(data, self.pagination.next)
            return with_param(url, param, cursor) if cursor not in (None, "") else None
        if kind == "link" and self.pagination.next:
            link = extract(data, self.pagination.next)
            return link if isinstance(link, str) and link else None
        return None
