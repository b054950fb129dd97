"""Raw record -> Document: validate, clean, stable id, canonical URL, language, cashtag tickers.
Raises InvalidRecord."""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from riskwire.exceptions import InvalidRecord
from riskwire.recent import RecentIds
from riskwire.records import Document, RawRecord, TickerLink, stable_id

TEXT_FIELDS = ("text", "body", "content", "summary", "description")
TITLE_FIELDS = ("title", "headline")
TIME_FIELDS = ("published_at", "published", "created_at", "timestamp", "date")
URL_FIELDS = ("url", "link")
MAX_TEXT = 100_000
MAX_FUTURE = timedelta(hours=1)
_TAG = re.compile(r"<[^>]{0,2000}>")
_SPACE = re.compile(r"\s+")
# control characters other than whitespace (NUL among them, which PostgreSQL cannot store in
# text), and UTF-16 surrogates with no partner (a producer that cut an emoji in half; no
# encoding takes them)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
_CASHTAG = re.compile(r"(?<![\w$])\$([A-Za-z]{1,6}(?:\.[A-Za-z]{1,2})?)(?![\w$])")
_TICKER = re.compile(r"^[A-Z][A-Z0-9]{0,5}(?:[.\-][A-Z0-9]{1,3})?$")


def storable(value: str) -> str:
    """``value`` as every database and encoding takes it: control characters (other than
    whitespace) become spaces, lone surrogates the replacement character."""
    return _SURROGATE.sub("\ufffd", _CONTROL.sub(" ", value))


def clean_text(value: object) -> str:
    if not isinstance(value, str):
        return ""
    return _SPACE.sub(" ", storable(html.unescape(_TAG.sub(" ", value)))).strip()


def _first(payload: dict[str, object], fields: tuple[str, ...]) -> object:
    for field in fields:
        value = payload.get(field)
        if value not in (None, ""):
            return value
    return None


def parse_time(value: object) -> datetime:
    """ISO-8601 with an offset (a trailing Z allowed) or epoch seconds. A time without an offset
    is refused: it is some unknown local time (a feed whose API gives local times says which zone
    with its ``timezone`` setting, and its times are converted at ingest)."""
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
    if parsed.tzinfo is None:
        raise InvalidRecord(
            f"published_at {value!r} has no UTC offset: an ambiguous local time (give the offset,"
            " or set the feed's timezone)"
        )
    return parsed.astimezone(UTC)


def extract_cashtags(text: str) -> list[str]:
    """``$AAPL``-style tickers in order of first mention, upper-cased; ``$100`` is not a ticker."""
    seen: dict[str, None] = {}
    for match in _CASHTAG.finditer(text):
        seen.setdefault(match.group(1).upper(), None)
    return list(seen)


def link_tickers(title: str, text: str, given: object) -> tuple[TickerLink, ...]:
    """Tickers the source names (relevance 1), exchange-prefixed tickers, cashtags and company names
    from the reference table, each with its relevance (see ``entities``)."""
    from streams.pipeline.entities import default_linker

    return default_linker().link(title, text, given)


TRACKING = re.compile(
    r"^(utm_[a-z]+|fbclid|gclid|dclid|msclkid|mc_cid|mc_eid|igshid|yclid|_hs(enc|mi)|"
    r"ref|ref_src|cmpid|ncid|soc_src|soc_trk|taid|smid|sr_share|share)$",
    re.IGNORECASE,
)


def canonical_url(value: object) -> str | None:
    """The URL two copies of an article share: http(s) only, host lower-cased, default port,
    fragment and tracking parameters (utm_*, fbclid, ...) dropped, the rest of the query sorted."""
    if not isinstance(value, str) or not value.strip() or storable(value) != value:
        return None  # a URL with control characters or broken text is no URL
    try:
        parts = urlsplit(value.strip())
        port = parts.port
    except ValueError:
        return None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https") or not parts.hostname:
        return None
    host = parts.hostname.lower()
    if port and (scheme, port) not in (("http", 80), ("https", 443)):
        host = f"{host}:{port}"
    query = sorted(
        (k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not TRACKING.match(k)
    )
    return urlunsplit((scheme, host, parts.path or "/", urlencode(query), ""))


# The languages financial news and posts come in most; deciding among fewer is more accurate on
# short texts. Below MIN_LANG_CONFIDENCE the language is 'und' (undetermined).
LANGUAGES = ("en", "de", "fr", "es", "it", "nl", "pt", "sv", "da", "no", "fi", "pl", "ru", "ja",
             "zh", "ko")  # fmt: skip
MIN_LANG_CONFIDENCE = 0.5
_identifier: Any = None


def detect_language(text: str) -> str:
    """ISO 639-1 code of ``text`` (py3langid, offline), or 'und' when it cannot tell."""
    global _identifier
    if _identifier is None:
        from py3langid.langid import MODEL_FILE, LanguageIdentifier

        identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=True)
        identifier.set_languages(list(LANGUAGES))
        _identifier = identifier
    words = _CASHTAG.sub(" ", text)
    if len(words.strip()) < 3:
        return "und"
    lang, confidence = _identifier.classify(words[:2000])
    return str(lang) if confidence >= MIN_LANG_CONFIDENCE else "und"


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
    lang = payload.get("lang")
    if isinstance(lang, str) and re.fullmatch(r"[A-Za-z]{2,3}([-_][A-Za-z0-9]{2,8})?", lang):
        lang = lang[:2].lower() if len(lang) > 3 else lang.lower()  # en-GB -> en
    else:
        lang = detect_language(f"{title} {text}")
    return Document(
        id=document_id(title, text),
        source=storable(raw.source),
        kind=raw.kind,
        title=title or None,
        text=text or title,
        url=canonical_url(_first(payload, URL_FIELDS)),
        lang=lang,
        published_at=published_at,
        fetched_at=raw.fetched_at,
        tickers=link_tickers(title, text, payload.get("tickers")),
    )


def scoring_text(doc: Document) -> str:
    return model_text(doc.title, doc.text)


def model_text(title: str | None, text: str) -> str:
    """What the models read of a document: its title, then its text (once where they are one)."""
    if title and title != text:
        return f"{title}. {text}"
    return text


class Deduplicator(RecentIds):
    """The worker's duplicate cache: the last ``capacity`` document ids sent on; the database's
    natural key is the guarantee."""
