"""The dead letters table for operators: find, summarise and mark letters sent back (redriven).

A letter's status: ``dead`` (never sent back), ``redriven`` (sent back, not seen failing since),
``failed-again`` (seen after it was sent back: the same stage refused the same bytes again).
``repository.insert_dead_letters`` stores them; ``riskwire.deadletters`` sends them back.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy import Select, and_, func, or_, select, update
from sqlalchemy.orm import Session

from storage.tables import DeadLetterRow

DEAD, REDRIVEN, FAILED_AGAIN = "dead", "redriven", "failed-again"
Q = TypeVar("Q", bound="Select[*tuple[Any, ...]]")  # any SELECT
STATUSES = (DEAD, REDRIVEN, FAILED_AGAIN)


def status_of(row: DeadLetterRow) -> str:
    return _status(row.last_seen_at, row.redriven_at)


def _status(last_seen_at: datetime, redriven_at: datetime | None) -> str:
    if redriven_at is None:
        return DEAD
    return FAILED_AGAIN if last_seen_at > redriven_at else REDRIVEN


def _status_clause(status: str) -> Any:
    redriven, seen = DeadLetterRow.redriven_at, DeadLetterRow.last_seen_at
    if status == DEAD:
        return redriven.is_(None)
    if status == REDRIVEN:
        return and_(redriven.is_not(None), seen <= redriven)
    if status == FAILED_AGAIN:
        return and_(redriven.is_not(None), seen > redriven)
    raise ValueError(f"unknown status {status!r}: one of {', '.join(STATUSES)}")


@dataclass(frozen=True)
class Selection:
    """Which dead letters: every given condition holds (none given: all of them).

    ``ids`` are ids or prefixes of at least 8 hex digits; ``statuses`` any of ``STATUSES``;
    ``reason`` a case-insensitive substring; ``since`` and ``until`` bound ``last_seen_at``."""

    ids: tuple[str, ...] = ()
    stages: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for ident in self.ids:
            if not re.fullmatch(r"[0-9a-f]{8,32}", ident):
                raise ValueError(f"{ident!r} is not a dead letter id (8 to 32 hex digits)")
        for status in self.statuses:
            _status_clause(status)

    @property
    def narrowed(self) -> bool:
        return bool(self.ids or self.stages or self.statuses or self.reason or self.since
                    or self.until)  # fmt: skip

    def where(self, query: Q) -> Q:
        if self.ids:
            query = query.where(
                or_(*(DeadLetterRow.id.startswith(i, autoescape=True) for i in self.ids))
            )
        if self.stages:
            query = query.where(DeadLetterRow.stage.in_(self.stages))
        if self.statuses:
            query = query.where(or_(*(_status_clause(s) for s in self.statuses)))
        if self.reason:
            query = query.where(
                func.lower(DeadLetterRow.reason).contains(self.reason.lower(), autoescape=True)
            )
        if self.since is not None:
            query = query.where(DeadLetterRow.last_seen_at >= self.since)
        if self.until is not None:
            query = query.where(DeadLetterRow.last_seen_at < self.until)
        return query


def find(
    session: Session,
    selection: Selection,
    limit: int | None = 100,
    *,
    oldest_first: bool = False,
    after: tuple[datetime, str] | None = None,
) -> list[DeadLetterRow]:
    """The selected letters, the most recently seen first (or the oldest, from past ``after``, a
    ``(last_seen_at, id)`` already read: pages that letters marked meanwhile do not shift)."""
    seen, ident = DeadLetterRow.last_seen_at, DeadLetterRow.id
    query = selection.where(select(DeadLetterRow))
    if oldest_first:
        query = query.order_by(seen, ident)
        if after is not None:
            query = query.where(or_(seen > after[0], and_(seen == after[0], ident > after[1])))
    else:
        query = query.order_by(seen.desc(), ident)
    if limit is not None:
        query = query.limit(limit)
    return list(session.scalars(query))


def count(session: Session, selection: Selection) -> int:
    return session.scalar(selection.where(select(func.count()).select_from(DeadLetterRow))) or 0


def fold_reason(reason: str) -> str:
    """A reason with its particulars (numbers, quoted values, ids) folded, so letters refused for
    the same cause count together: ``record is 1,048,700 bytes`` -> ``record is N bytes``."""
    folded = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", reason.splitlines()[0] if reason else "")
    folded = re.sub(r"\b[0-9a-f]{16,}\b", "ID", folded)
    folded = re.sub(r"\d{4}-\d\d-\d\d[T ][\d:.]+(Z|[+-]\d\d:?\d\d)?", "TIME", folded)
    # numbers on their own (ISO-8601 and utf-8 stay)
    folded = re.sub(r"(?<![A-Za-z0-9]-)(?<![A-Za-z0-9])\d[\d,._:+-]*", "N", folded)
    return folded[:160]


@dataclass
class Tally:
    stage: str
    reason: str  # folded
    letters: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(STATUSES, 0))
    last_seen_at: datetime | None = None

    @property
    def dead(self) -> int:
        return self.by_status[DEAD]

    @property
    def redriven(self) -> int:
        return self.by_status[REDRIVEN]

    @property
    def failed_again(self) -> int:
        return self.by_status[FAILED_AGAIN]


def summarise(session: Session, selection: Selection) -> list[Tally]:
    """Letters per stage and folded reason, with their statuses, the most numerous first."""
    tallies: dict[tuple[str, str], Tally] = {}
    row = DeadLetterRow
    query = selection.where(select(row.stage, row.reason, row.last_seen_at, row.redriven_at))
    for stage, reason, seen, redriven in session.execute(query).tuples():
        folded = fold_reason(reason)
        tally = tallies.get((stage, folded))
        if tally is None:
            tally = tallies[(stage, folded)] = Tally(stage, folded)
        tally.letters += 1
        tally.by_status[_status(seen, redriven)] += 1
        if tally.last_seen_at is None or seen > tally.last_seen_at:
            tally.last_seen_at = seen
    return sorted(tallies.values(), key=lambda t: (-t.letters, t.stage, t.reason))


def mark_redriven(session: Session, ids: Sequence[str], at: datetime) -> None:
    """These letters were sent back at ``at`` (taken before sending: a letter refused again after
    that is seen later than it, whichever of the two writes lands first)."""
    for start in range(0, len(ids), 500):
        session.execute(
            update(DeadLetterRow)
            .where(DeadLetterRow.id.in_(ids[start : start + 500]))
            .values(redriven_at=at, redrives=DeadLetterRow.redrives + 1)
        )
