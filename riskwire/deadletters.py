"""Send dead letters back into the stream (``riskwire deadletters redrive``), after the cause is
fixed: a bug in a stage, a feed's format, a database that refused a row. Where each goes is
``streams.pipeline.redrive.route``; the letters sent are marked (``storage.deadletters``), and a
letter refused again shows as ``failed-again`` once the worker stores it anew.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from riskwire.exceptions import RiskwireError
from riskwire.records import DeadLetter
from riskwire.settings import Settings
from storage.deadletters import (
    DEAD,
    FAILED_AGAIN,
    Selection,
    Tally,
    find,
    mark_redriven,
    status_of,
)
from storage.tables import DeadLetterRow
from streams.pipeline.redrive import Refusal, route

log = logging.getLogger(__name__)
BATCH = 500  # letters read, sent and marked at a time


@dataclass
class RedriveReport:
    selected: int = 0
    sent: dict[str, int] = field(default_factory=dict)  # per topic
    refused: dict[str, int] = field(default_factory=dict)  # per reason
    failed: dict[str, int] = field(default_factory=dict)  # not sent (the broker's error): left dead
    dry_run: bool = False

    @property
    def sent_total(self) -> int:
        return sum(self.sent.values())

    def as_dict(self) -> dict[str, Any]:
        return {"selected": self.selected, "sent": self.sent, "sent_total": self.sent_total,
                "refused": self.refused, "failed": self.failed, "dry_run": self.dry_run}  # fmt: skip


def describe(row: DeadLetterRow, payload: bool = False) -> dict[str, Any]:
    """A stored letter as JSON-ready data (the CLI's ``--json`` and the API), payload if asked."""
    out = {
        "id": row.id, "stage": row.stage, "status": status_of(row), "reason": row.reason,
        "topic": row.topic, "key": row.key, "occurred_at": row.occurred_at.isoformat(),
        "last_seen_at": row.last_seen_at.isoformat(), "redrives": row.redrives,
        "redriven_at": row.redriven_at.isoformat() if row.redriven_at else None,
        "payload_exact": row.payload_exact, "payload_chars": len(row.payload),
    }  # fmt: skip
    if payload:
        out["payload"] = row.payload
    return out


def describe_tallies(tallies: list[Tally]) -> dict[str, Any]:
    causes = [
        {
            "stage": t.stage, "reason": t.reason, "letters": t.letters, "dead": t.dead,
            "redriven": t.redriven, "failed_again": t.failed_again,
            "last_seen_at": t.last_seen_at.isoformat() if t.last_seen_at else None,
        }
        for t in tallies
    ]  # fmt: skip
    return {"causes": causes, "total": sum(t.letters for t in tallies)}


def letter_of(row: DeadLetterRow) -> DeadLetter:
    return DeadLetter(
        stage=row.stage, reason=row.reason, topic=row.topic, key=row.key, payload=row.payload,
        occurred_at=row.occurred_at, payload_exact=row.payload_exact,
    )  # fmt: skip


def redrive(
    sessions: sessionmaker[Session],
    settings: Settings,
    selection: Selection,
    *,
    again: bool = False,
    limit: int | None = None,
    dry_run: bool = False,
    progress: Callable[[int], None] | None = None,
) -> RedriveReport:
    """Send the selected letters back, the oldest seen first, at most ``limit`` of them. Letters
    already sent back and not seen failing since are left out unless ``again``. Each batch is
    produced (acknowledged by every replica), then marked; a crash between the two sends it again
    on the next run, which the stream's idempotent writes absorb."""
    if not again and not selection.statuses:
        selection = replace(selection, statuses=(DEAD, FAILED_AGAIN))
    # letters as they were seen when this began: one refused again meanwhile is seen later, and
    # would come round again (and again, while the cause lasts) in the pages still to read
    began = datetime.now(UTC)
    selection = replace(selection, until=min(selection.until or began, began))
    report = RedriveReport(dry_run=dry_run)
    topics = settings.topics
    producer = None if dry_run else _producer(settings)
    after: tuple[datetime, str] | None = None
    try:
        while limit is None or report.selected < limit:
            size = BATCH if limit is None else min(BATCH, limit - report.selected)
            with sessions() as session:
                rows = find(session, selection, size, oldest_first=True, after=after)
            if not rows:
                break
            after = (rows[-1].last_seen_at, rows[-1].id)
            report.selected += len(rows)
            at = datetime.now(UTC)  # before sending: see ``mark_redriven``
            going: list[tuple[str, str, Any]] = []  # (letter id, topic, the send's future)
            for row in rows:
                where = route(letter_of(row), topics)
                if isinstance(where, Refusal):
                    report.refused[where.reason] = report.refused.get(where.reason, 0) + 1
                    continue
                sending = None
                if producer is not None:
                    sending = producer.send(where.topic, key=where.key, value=where.value)
                going.append((row.id, where.topic, sending))
            if producer is not None and going:
                producer.flush()
            sent = []
            for letter_id, topic, sending in going:
                if sending is not None and sending.failed():
                    name, text = type(sending.exception).__name__, str(sending.exception)
                    why = text if text.startswith(name) else f"{name}: {text}"  # kafka's have it
                    report.failed[why] = report.failed.get(why, 0) + 1
                    continue
                sent.append(letter_id)
                report.sent[topic] = report.sent.get(topic, 0) + 1
            if producer is not None and sent:
                with sessions.begin() as session:
                    mark_redriven(session, sent, at)
            if progress is not None:
                progress(report.selected)
    finally:
        if producer is not None:
            producer.close()
    if report.sent_total and not dry_run:
        log.info("redrove %d dead letters: %s", report.sent_total, report.sent)
    return report


def _producer(settings: Settings) -> Any:
    from kafka import KafkaProducer

    from riskwire.broker import ensure_topics
    from riskwire.kafka_security import client_config

    if settings.kafka_bootstrap is None:
        raise RiskwireError("redrive needs a broker: set RISKWIRE_KAFKA_BOOTSTRAP")
    security = client_config(settings)
    ensure_topics(
        settings.kafka_bootstrap, settings.topics.all(), settings.topic_partitions, **security
    )
    return KafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap.split(","), acks="all", linger_ms=5,
        max_request_size=1_048_576, **security,
    )  # fmt: skip
