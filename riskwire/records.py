"""Shared record contracts: what travels on the topics, with a versioned JSON form.

Imports nothing heavy, so ingest/, streams/, models/ and storage/ can all depend on it.
Every record serialises to JSON with a ``schema`` field such as ``"document/1"``; decoding checks it,
so a producer on a newer major version is refused with a clear reason instead of misread.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, ClassVar, Literal, Self, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticSerializationError

from riskwire.exceptions import InvalidRecord

LABELS: tuple[str, str, str] = ("negative", "neutral", "positive")
"""The canonical label order of every probability vector in riskwire."""


def _aware_utc(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("datetime must be timezone-aware")
    return value.astimezone(UTC)


UtcDateTime = Annotated[datetime, AfterValidator(_aware_utc)]
Label = Literal["negative", "neutral", "positive"]
Probabilities = tuple[float, float, float]


# Groups: what risk state and alerts are kept per. A ticker is its own key; a sector is
# ``sector:<name>``; the whole market is ``market``.
MARKET = "market"
SECTOR_PREFIX = "sector:"
FEED_PREFIX = "feed:"  # feed-health alerts are kept under "feed:<source>"
GROUP_KINDS = ("ticker", "sector", "market")


def group_key(kind: str, value: str = "") -> str:
    """The key a group's state and alerts are kept under."""
    if kind == "ticker":
        return value
    if kind == "sector":
        return SECTOR_PREFIX + value
    if kind == "market":
        return MARKET
    raise ValueError(f"unknown group kind {kind!r}; known: {GROUP_KINDS}")


def group_kind(key: str) -> str:
    if key == MARKET:
        return "market"
    if key.startswith(FEED_PREFIX):
        return "feed"
    return "sector" if key.startswith(SECTOR_PREFIX) else "ticker"


class Kind(StrEnum):
    NEWS = "news"
    SOCIAL = "social"


class Severity(StrEnum):
    INFO = "info"
    WARNING = "warning"
    CRITICAL = "critical"


class AlertState(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"


class Record(BaseModel):
    """Base of the topic records: frozen, strict about unknown fields, versioned JSON."""

    model_config = ConfigDict(frozen=True, extra="forbid")
    SCHEMA: ClassVar[str] = "record/1"

    def to_json(self) -> bytes:
        """Compact UTF-8 JSON with the schema first, serialised by pydantic-core (in Rust: about
        a fifth of the time of ``model_dump`` and ``json.dumps``; every stage pays it per record)."""
        try:
            body = self.__pydantic_serializer__.to_json(self)
        except PydanticSerializationError:
            # text with half a UTF-16 surrogate pair (a JSON API that cut an emoji in half sends
            # "\ud83d" alone, and json.loads keeps it), which UTF-8 cannot encode: written as the
            # same escape it came as, read back as the same text
            dumped = json.dumps(self.model_dump(mode="json"), separators=(",", ":"))
            body = dumped.encode()
        head = b'{"schema":"' + self.SCHEMA.encode()
        return head + (b'"}' if body == b"{}" else b'",' + body[1:])

    @classmethod
    def from_json(cls, data: bytes | str) -> Self:
        return cls.from_obj(parse_json(data))

    @classmethod
    def from_obj(cls, body: object) -> Self:
        """The record from decoded JSON (``from_json`` less the parsing); ``body`` is consumed."""
        if not isinstance(body, dict):
            raise InvalidRecord(f"expected a JSON object, got {type(body).__name__}")
        schema = body.pop("schema", None)
        if schema != cls.SCHEMA:
            raise InvalidRecord(f"schema {schema!r} is not {cls.SCHEMA!r}")
        try:
            return cls.model_validate(body)
        except ValidationError as exc:
            raise InvalidRecord(_validation_reason(exc)) from exc


def parse_json(data: bytes | str) -> object:
    """Decoded JSON, or InvalidRecord saying why not."""
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InvalidRecord(f"not valid JSON: {exc}") from exc


def _validation_reason(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "record"
        parts.append(f"{where}: {err['msg']}")
    return "; ".join(parts)


class RawRecord(Record):
    """An item as fetched by a source, with fetch metadata; the payload is kept as it came."""

    SCHEMA: ClassVar[str] = "raw/1"
    source: str
    kind: Kind
    fetched_at: UtcDateTime
    payload: dict[str, object]


class TickerLink(Record):
    SCHEMA: ClassVar[str] = "ticker-link/1"
    ticker: str
    relevance: float = Field(ge=0.0, le=1.0)


class Document(Record):
    """A normalised document: stable id, clean text, event time, linked tickers."""

    SCHEMA: ClassVar[str] = "document/1"
    id: str
    source: str
    kind: Kind
    title: str | None = None
    text: str
    url: str | None = None
    lang: str = "en"
    published_at: UtcDateTime
    fetched_at: UtcDateTime
    tickers: tuple[TickerLink, ...] = ()
    # the first document of the story this one nearly duplicates (or itself), and its novelty:
    # 1 for a story's first document, halved for each later copy
    story_id: str | None = None
    novelty: float = 1.0


class Vote(Record):
    """One ensemble member's judgement of one document."""

    SCHEMA: ClassVar[str] = "vote/1"
    member: str
    model_version: str
    label: Label
    probabilities: Probabilities


class Score(Record):
    """The fused judgement of one document, fanned out once per linked ticker."""

    SCHEMA: ClassVar[str] = "score/1"
    document_id: str
    ticker: str | None
    kind: Kind
    published_at: UtcDateTime
    model_version: str
    label: Label
    probabilities: Probabilities
    score: float = Field(ge=-1.0, le=1.0, description="P(positive) - P(negative)")
    confidence: float = Field(ge=0.0, le=1.0)
    disagreement: float = Field(ge=0.0, le=1.0)
    votes: tuple[Vote, ...]
    run_id: str = "live"
    story_id: str | None = None  # copies of one story count once in a ticker's windows


R = TypeVar("R", bound=Record)
SCORE_BATCH = "scores/1"
DOCUMENT_BATCH = "documents/1"


def encode_batch(schema: str, records: Sequence[Record]) -> bytes:
    """Several records as one message: the stages send one per partition and batch, so the
    per-message cost of the broker client and of Faust is paid once, not once per record."""
    return join_batch(schema, [r.to_json() for r in records])


def join_batch(schema: str, bodies: Sequence[bytes]) -> bytes:
    """``encode_batch`` of records already encoded (``Record.to_json``)."""
    return b'{"schema":"' + schema.encode() + b'","records":[' + b",".join(bodies) + b"]}"


def decode_batch(
    data: bytes, record_type: type[R], schema: str
) -> tuple[list[R], list[tuple[str, bytes]]]:
    """The records in a message, in order: a batch of ``schema`` (``encode_batch``) or a single
    record. Each one that does not validate comes back as (reason, its JSON), for a dead letter;
    a message that is neither raises InvalidRecord."""
    body = parse_json(data)
    if not (isinstance(body, dict) and body.get("schema") == schema):
        return [record_type.from_obj(body)], []
    items = body.get("records", body.get("scores"))  # "scores": how scores/1 began
    if not isinstance(items, list):
        raise InvalidRecord(f"a {schema} batch needs a list of records")
    records: list[R] = []
    bad: list[tuple[str, bytes]] = []
    for item in items:
        try:
            records.append(record_type.from_obj(dict(item) if isinstance(item, dict) else item))
        except InvalidRecord as exc:
            bad.append((str(exc), json.dumps(item, separators=(",", ":")).encode()))
    return records, bad


def encode_scores(scores: Sequence[Score]) -> bytes:
    return encode_batch(SCORE_BATCH, scores)


class Alert(Record):
    """A warning-rule event. ``id`` is rule + group + window start, so re-evaluation is idempotent."""

    SCHEMA: ClassVar[str] = "alert/1"
    id: str
    run_id: str = "live"
    rule: str
    ticker: str
    severity: Severity
    state: AlertState
    window_start: UtcDateTime
    window_end: UtcDateTime
    event_time: UtcDateTime
    values: dict[str, float]
    thresholds: dict[str, float]
    evidence: tuple[str, ...]
    explanation: str
    family: str | None = None  # the rule's family, for inhibition


class Watermark(Record):
    """A marker the scoring stage sends to every partition of ``scored`` and ``groups``: it has
    sent all scores of documents from ``source_partition`` (of ``docs``) up to ``event_time``
    before this marker. ``idle``: that partition has had nothing for a while; do not wait on it."""

    SCHEMA: ClassVar[str] = "watermark/1"
    source_partition: int = Field(ge=0)
    event_time: UtcDateTime | None = None
    idle: bool = False


class DeadLetter(Record):
    """Something that could not be processed, with where and why; the original bytes are kept."""

    SCHEMA: ClassVar[str] = "deadletter/1"
    stage: str
    reason: str
    topic: str | None = None
    key: str | None = None
    payload: str
    occurred_at: UtcDateTime
    # the payload is the original bytes, whole and valid UTF-8, so it can be sent again as it came
    # (``riskwire deadletters redrive``); false where it was cut or its invalid bytes escaped
    payload_exact: bool = True

    @property
    def id(self) -> str:
        return stable_id(self.stage, self.topic or "", self.key or "", self.payload)

    @classmethod
    def of(
        cls,
        stage: str,
        reason: str,
        payload: bytes | str | None,
        *,
        occurred_at: datetime,
        topic: str | None = None,
        key: bytes | str | None = None,
    ) -> DeadLetter:
        text, exact = _original(payload)
        kept = _clip(text)
        return cls(
            stage=stage,
            reason=_storable(reason[:2000]),
            topic=topic,
            key=_text(key),
            payload=kept,
            occurred_at=occurred_at,
            payload_exact=exact and kept is text,
        )


MAX_DEAD_PAYLOAD = 64 * 1024  # characters of a payload a dead letter keeps (it must fit a message)


def _clip(text: str) -> str:
    if len(text) <= MAX_DEAD_PAYLOAD:
        return text
    return text[:MAX_DEAD_PAYLOAD] + f"... [truncated: {len(text)} characters in all]"


def _original(payload: bytes | str | None) -> tuple[str, bool]:
    """The payload as text, and whether that text encodes back to the very bytes (not where it
    held NUL, which PostgreSQL cannot store in text: escaped as ``\\x00``)."""
    if payload is None or isinstance(payload, str):
        text, exact = payload or "", True
    else:
        try:
            text, exact = payload.decode("utf-8"), True
        except UnicodeDecodeError:
            text, exact = payload.decode("utf-8", errors="backslashreplace"), False
    storable = _storable(text)
    return storable, exact and storable == text


def _storable(text: str) -> str:
    """NUL and lone surrogates written out as escapes, for a text column of any database."""
    if "\x00" not in text and not _SURROGATE.search(text):
        return text
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text.replace("\x00", "\\x00"))


_SURROGATE = re.compile("[\ud800-\udfff]")


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return value
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="backslashreplace")
    return _storable(value)


def stable_id(*parts: str) -> str:
    """A 32-hex-digit id that is the same on every machine and every run for the same parts."""
    digest = hashlib.blake2b(digest_size=16)
    for part in parts:
        digest.update(part.encode())
        digest.update(b"\x1f")
    return digest.hexdigest()
