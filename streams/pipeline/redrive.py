"""Where a dead letter goes when it is sent back (redriven), or why it cannot be. Pure.

A letter goes back to where its record enters the stream again, judged by what its payload is:

- a raw record (``raw/1``): the raw topic it came from (else its kind's), so normalising runs
  again and the document gets the id it would have had;
- a document (``document/1``, dead-lettered by scoring or by storage): the docs topic;
- a score (``score/1``, dead-lettered by the risk stage): the topic of its group's kind (``scored``
  for a ticker, ``groups`` for a sector or the market), keyed by the group, so Kafka's partitioner
  puts it on the partition whose worker holds that group's state, as scoring does;
- anything else (bytes that did not decode): the topic it came from, as it was, if that is one the
  stream reads; a fix in the code may take it now.

Refused: letters refused as ``late`` (stored already; counting them needs a replay or a backfill of
their period), payloads that are not the original bytes (cut at 64 KiB, or invalid UTF-8 escaped),
and letters that never were on a topic the stream reads (ingest's refusals: ingest the source
again). Sending a letter back is safe to repeat: every write downstream is idempotent.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from riskwire.records import DeadLetter, Document, RawRecord, Score, group_kind
from riskwire.settings import Topics


@dataclass(frozen=True)
class Route:
    topic: str
    key: bytes | None
    value: bytes


@dataclass(frozen=True)
class Refusal:
    reason: str


def route(letter: DeadLetter, topics: Topics) -> Route | Refusal:
    """Where ``letter`` goes back to, or why it does not."""
    if letter.stage == "late":
        return Refusal(
            "a late document is stored already; counting it in its windows takes a replay or a "
            "backfill of its period"
        )
    if not letter.payload_exact:
        return Refusal(
            "the payload kept is not the original bytes (cut at 64 KiB, or not valid UTF-8): "
            "ingest the record again from its source"
        )
    value = letter.payload.encode("utf-8")
    key = letter.key.encode("utf-8") if letter.key is not None else None
    inputs = [topics.raw_news, topics.raw_social, topics.docs, topics.scored, topics.groups]
    schema = _schema(letter.payload)
    if schema == RawRecord.SCHEMA:
        topic = letter.topic if letter.topic in (topics.raw_news, topics.raw_social) else None
        if topic is None:
            kind = json.loads(letter.payload).get("kind")
            if kind not in ("news", "social"):
                return Refusal(f"a raw record of kind {kind!r}, and no raw topic it came from")
            topic = topics.raw(kind)
        return Route(topic, key, value)
    if schema == Document.SCHEMA:
        return Route(topics.docs, key, value)
    if schema == Score.SCHEMA:
        group = json.loads(letter.payload).get("ticker")
        if not isinstance(group, str) or not group:
            return Refusal("a score without a ticker or group to key it by")
        topic = topics.scored if group_kind(group) == "ticker" else topics.groups
        return Route(topic, group.encode("utf-8"), value)
    if letter.topic in inputs:
        return Route(letter.topic, key, value)
    return Refusal(
        f"it was never on a topic the stream reads (topic {letter.topic!r}, stage "
        f"{letter.stage!r}): ingest the record again from its source"
    )


def _schema(payload: str) -> str | None:
    """The ``schema`` a JSON object payload names, else None."""
    if not payload.lstrip().startswith("{"):
        return None
    try:
        data = json.loads(payload)
    except ValueError:
        return None
    schema = data.get("schema") if isinstance(data, dict) else None
    return schema if isinstance(schema, str) else None
