"""Raw record -> Document: validate, clean, stable id, cashtag tickers. Raises InvalidRecord."""

from __future__ import annotations

import html
import re
from collections import OrderedDict
from datetime import UTC, datetime, timedelta

from riskwire.exceptions import InvalidRecord
from riskwire.records import Document, RawRecord, TickerLink, stable_id

TEXT_FIELDS = ("text", "body", "content", "summary", "description")
TITLE_FIELDS = ("title", "headline")
TIME_FIELDS = ("published_at", "published", "created_at", "timestamp", "date")
URL_FIELDS = ("url", "link")
MAX_TEXT = 100_000
MAX_FUTURE = timedelta(hours=1)
_TAG = re.compile(r"<[^>]{0,2000}>")
_SPACE = re.compile(r"\s+")
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?![\w$])")
_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}(?:[.\-][A-Z0-9]{1,3})?$")


def clean_text(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", html.unescape(_TAG.sub(" ", value))).strip()


def _first(payload: dict[str, object], fields: tuple[str, ...]) -> object:
    for field in fields:
        value = payload.get(field)
        if value not in (None, ""):
            return value
    return None


def parse_time(value: object) -> datetime:
    """ISO-8601 (a trailing Z allowed) or epoch seconds; naive times are taken as UTC."""
    if isinstance(value, bool):
        raise InvalidRecord(f"published_at {value!r} is not a time")
    if isinstance(value, int | float):
        try:
            return datetime.fromtimestamp(float(value), tz=UTC)
        except (OverflowError, OSError, ValueError) as exc:
            raise InvalidRecord(f"published_at {value!r} is out of range") from exc
    if not isinstance(value, str):
        raise InvalidRecord(f"published_at {value!r} is not ISO-8601 or epoch seconds")
    try:
        parsed = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError as exc:
        raise InvalidRecord(f"published_at {value!r} is not ISO-8601 or epoch seconds") from exc
    return parsed.replace(tzinfo=UTC) if parsed.tzinfo is None else parsed.astimezone(UTC)


def extract_cashtags(text: str) -> list[str]:
    """``$AAPL``-style tickers in order of first mention, upper-cased; ``$100`` is not a ticker."""
    seen: dict[str, None] = {}
    for match in _CASHTAG.finditer(text):
        seen.setdefault(match.group(1).upper(), None)
    return list(seen)


def link_tickers(title: str, text: str, given: object) -> tuple[TickerLink, ...]:
    """Tickers named by the source (relevance 1), cashtags in the title (1) or only in the body (0.7)."""
    links: dict[str, float] = {}
    if given is not None:
        if not isinstance(given, list) or not all(isinstance(t, str) for t in given):
            raise InvalidRecord(f"tickers must be a list of strings, got {given!r}")
        for ticker in given:
            symbol = ticker.strip().lstrip("$").upper()
            if not _TICKER.match(symbol):
                raise InvalidRecord(f"ticker {ticker!r} is not a valid symbol")
            links[symbol] = 1.0
    for symbol in extract_cashtags(title):
        links[symbol] = 1.0
    for symbol in extract_cashtags(text):
        links.setdefault(symbol, 0.7)
    return tuple(TickerLink(ticker=t, relevance=r) for t, r in links.items())


def document_id(title: str, text: str) -> str:
    """Same content -> same id, whoever published it: exact duplicates collapse onto one row."""
    return stable_id(_SPACE.sub(" ", f"{title}\n{text}".casefold()).strip())


def normalise(raw: RawRecord) -> Document:
    payload = raw.payload
    title = clean_text(_first(payload, TITLE_FIELDS))
    text = clean_text(_first(payload, TEXT_FIELDS))
    if not title and not text:
        raise InvalidRecord("payload has no title or text")
    if len(title) + len(text) > MAX_TEXT:
        raise InvalidRecord(f"text is longer than {MAX_TEXT} characters")
    published = _first(payload, TIME_FIELDS)
    if published is None:
        raise InvalidRecord("payload has no published_at")
    published_at = parse_time(published)
    if published_at > raw.fetched_at + MAX_FUTURE:
        raise InvalidRecord(
            f"published_at {published_at.isoformat()} is after fetch time {raw.fetched_at.isoformat()}"
        )
    url = _first(payload, URL_FIELDS)
    lang = payload.get("lang")
    return Document(
        id=document_id(title, text),
        source=raw.source,
        kind=raw.kind,
        title=title or None,
        text=text or title,
        url=url if isinstance(url, str) else None,
        lang=lang if isinstance(lang, str) and 0 < len(lang) <= 8 else "en",
        published_at=published_at,
        fetched_at=raw.fetched_at,
        tickers=link_tickers(title, text, payload.get("tickers")),
    )


def scoring_text(doc: Document) -> str:
    if doc.title and doc.title != doc.text:
        return f"{doc.title}. {doc.text}"
    return doc.text


class Deduplicator:
    """Remembers the last ``capacity`` document ids; the database's natural key is the guarantee."""

    def __init__(self, capacity: int = 100_000) -> None:
        self.capacity = capacity
        self._seen: OrderedDict[str, None] = OrderedDict()

    def is_new(self, doc_id: str) -> bool:
        if doc_id in self._seen:
            self._seen.move_to_end(doc_id)
            return False
        self._seen[doc_id] = None
        if len(self._seen) > self.capacity:
            self._seen.popitem(last=False)
        return True
