"""Produce raw records to the raw topics (and unreadable input to the dead-letter topic)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from kafka import KafkaProducer
from kafka.errors import KafkaError

from ingest.base import SourceItem
from riskwire.exceptions import RiskwireError
from riskwire.records import DeadLetter, RawRecord, stable_id
from riskwire.settings import Settings, Topics

log = logging.getLogger(__name__)


class PublishError(RiskwireError):
    """The broker did not take every record of a publish (the rest may have landed: publishing
    the same items again is safe, the stream stores each document once)."""


@dataclass
class ProduceCounts:
    raw: int = 0
    dead: int = 0


def record_key(record: RawRecord) -> bytes:
    """The source's own item id when it has one, otherwise a hash of the payload."""
    item_id = record.payload.get("id") or record.payload.get("guid")
    if isinstance(item_id, str | int) and str(item_id):
        return f"{record.source}:{item_id}".encode(errors="backslashreplace")  # lone surrogates
    return stable_id(record.source, repr(sorted(record.payload.items()))).encode()


MAX_RECORD_BYTES = 900_000


class RawProducer:
    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        partitions: int = 4,
        security: Mapping[str, Any] | None = None,
        timeout_s: float = 30.0,
        **config: object,
    ) -> None:
        """``security``: ``riskwire.kafka_security.client_config`` (TLS, SASL), for both the
        producer and the admin client that creates the topics; ``config``: the producer's own.
        A cluster that does not answer the admin client within ``timeout_s`` raises
        ``BrokerError`` saying why (``riskwire.broker.ensure_topics``)."""
        from riskwire.broker import ensure_topics

        self.topics = topics
        security = dict(security or {})
        # never by auto-creation (see there)
        ensure_topics(bootstrap, topics.all(), partitions, timeout_s, **security)
        self._producer = KafkaProducer(
            bootstrap_servers=bootstrap.split(","), acks="all", linger_ms=5, **security, **config
        )

    @classmethod
    def for_settings(
        cls, settings: Settings, timeout_s: float = 30.0, **config: object
    ) -> RawProducer:
        """A producer to the settings' broker, topics and security."""
        from riskwire.kafka_security import client_config

        if settings.kafka_bootstrap is None:
            raise RiskwireError(
                "RISKWIRE_KAFKA_BOOTSTRAP is not set: start 'riskwire broker' first"
            )
        return cls(
            settings.kafka_bootstrap, settings.topics, settings.topic_partitions,
            security=client_config(settings), timeout_s=timeout_s, **config,
        )  # fmt: skip

    def publish(self, items: Iterable[SourceItem]) -> ProduceCounts:
        """Send every item and wait until the broker has them all; raises :class:`PublishError`
        if it did not take one (the producer's own retries spent), so the caller can keep the
        items and publish them again instead of counting them as sent."""
        counts = ProduceCounts()
        futures = []
        try:
            for item in items:
                futures.append(self._send(item, counts))
            self._producer.flush()
        except KafkaError as exc:
            raise PublishError(f"the broker did not take the records: {exc}") from exc
        failed = [f.exception for f in futures if f.failed()]
        if failed:
            raise PublishError(f"the broker did not take {len(failed)} of {len(futures)} "
                               f"records: {failed[0]}")  # fmt: skip
        log.info("produced %d raw records and %d dead letters", counts.raw, counts.dead)
        return counts

    def _send(self, item: SourceItem, counts: ProduceCounts) -> Any:
        """One item to its raw topic (a dead letter, or a record too large, to the dead-letter
        topic); the send's future."""
        if not isinstance(item, DeadLetter):
            value = item.to_json()
            if len(value) > MAX_RECORD_BYTES:  # Kafka refuses messages over about 1 MB
                item = DeadLetter.of(
                    "ingest",
                    f"record is {len(value):,} bytes; the limit is {MAX_RECORD_BYTES:,}",
                    value, occurred_at=datetime.now(UTC), key=record_key(item),
                )  # fmt: skip
        if isinstance(item, DeadLetter):
            counts.dead += 1
            key = (item.key or "").encode() or None
            return self._producer.send(self.topics.deadletter, value=item.to_json(), key=key)
        counts.raw += 1
        return self._producer.send(self.topics.raw(item.kind), value=value, key=record_key(item))

    def close(self, timeout: float | None = None) -> None:
        """Close the producer, waiting at most ``timeout`` seconds for what it still holds."""
        self._producer.close(timeout=timeout)

    def __enter__(self) -> RawProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
