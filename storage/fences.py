"""Fencing a stream partition's results against a worker that no longer owns it.

A worker paused for longer than its session (a stop-the-world pause, a VM migration, SIGSTOP)
is put out of the group; its partitions go to others, who rebuild the groups' state from what was
stored and go on. When it wakes it does not know yet, and finishes what it was doing: it writes
the rolling rows, aggregates and alerts of partitions another worker now owns. Rows keyed by
document are the same whoever computes them, but an aggregate or an alert is one row that moves
on: the late writer puts back an older value over the new owner's (seen: hour windows stored
with 1 document of their 7, after a 15 s pause).

So a worker that gets a partition (in each consumer group generation) first *acquires* it: the
partition's epoch in ``stream_fences`` goes up by one, and the new epoch is the worker's token.
Each transaction that then writes the partition's results, or reads them back to rebuild its
groups, first *checks* the token against the epoch, with the row locked to the end of the
transaction (``FOR UPDATE`` on PostgreSQL; SQLite has one writer at a time), and is refused
(:class:`Fenced`) once another worker has acquired the partition since. A write under way when the
partition is acquired is waited for, and read back by the new owner; a write after it is
refused. The epoch is the database's own count, not the group generation, which starts again
lower when the group does (a new embedded broker; an Apache Kafka group expired after its
workers were all gone for its offsets' retention).
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterable
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from riskwire.exceptions import RiskwireError
from storage.repository import _insert
from storage.tables import StreamFenceRow

OWNER = f"{socket.gethostname()}:{os.getpid()}"


class Fenced(RiskwireError):
    """Another worker has acquired the partition since this one did: this one lost it."""

    def __init__(self, topic: str, partitions: dict[int, tuple[int, str]]):
        self.topic, self.partitions = topic, partitions
        held = ", ".join(f"{p} (epoch {e}, {o})" for p, (e, o) in sorted(partitions.items()))
        super().__init__(f"{topic}: partitions {held} acquired by another worker since")


def _locked(session: Session, topic: str, partitions: list[int]) -> dict[int, tuple[int, str]]:
    query = (
        select(StreamFenceRow.partition, StreamFenceRow.epoch, StreamFenceRow.owner)
        .where(StreamFenceRow.topic == topic, StreamFenceRow.partition.in_(partitions))
        .with_for_update()
    )
    return {p: (e, o) for p, e, o in session.execute(query)}


def acquire(
    session: Session, topic: str, partitions: Iterable[int], generation: int | None = None,
    now: datetime | None = None,
) -> dict[int, int]:  # fmt: skip
    """In the caller's transaction: take ``partitions`` of ``topic`` over; returns each one's new
    epoch, this writer's token once the transaction commits (``generation``, the consumer group's,
    is kept to say who holds it)."""
    wanted = sorted(set(partitions))
    if not wanted:
        return {}
    when = now or datetime.now(UTC)
    found = _locked(session, topic, wanted)
    missing = [p for p in wanted if p not in found]
    if missing:
        rows = [
            {"topic": topic, "partition": p, "epoch": 0, "generation": generation,
             "owner": OWNER, "claimed_at": when}
            for p in missing
        ]  # fmt: skip
        insert = _insert(session, StreamFenceRow).values(rows)
        session.execute(insert.on_conflict_do_nothing())  # type: ignore[attr-defined]
        found.update(_locked(session, topic, missing))
    session.execute(
        update(StreamFenceRow)
        .where(StreamFenceRow.topic == topic, StreamFenceRow.partition.in_(wanted))
        .values(epoch=StreamFenceRow.epoch + 1, generation=generation, owner=OWNER,
                claimed_at=when)
    )  # fmt: skip
    return {p: found[p][0] + 1 for p in wanted}  # the rows are locked: no one else moved them


def check(session: Session, topic: str, tokens: dict[int, int]) -> None:
    """In the caller's transaction: raise :class:`Fenced` unless each partition's epoch is still
    this writer's token (one statement; the rows stay locked to the end of the transaction)."""
    if not tokens:
        return
    found = _locked(session, topic, sorted(tokens))
    lost = {p: found.get(p, (0, "nobody")) for p, t in tokens.items() if found.get(p, (0,))[0] != t}
    if lost:
        raise Fenced(topic, lost)
