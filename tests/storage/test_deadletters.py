"""The dead letters table for operators (``storage.deadletters``), on SQLite and PostgreSQL: one row
per letter however often it comes, its status across a redrive, selections and summaries."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy import inspect, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import MAX_DEAD_PAYLOAD, DeadLetter
from storage import make_engine
from storage.base import UtcDateTime
from storage.deadletters import (
    DEAD,
    FAILED_AGAIN,
    REDRIVEN,
    Selection,
    count,
    find,
    mark_redriven,
    status_of,
    summarise,
)
from storage.migrate import downgrade, upgrade
from storage.repository import insert_dead_letters
from storage.tables import DeadLetterRow

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def letter(n: int, at: datetime = T0, stage: str = "normalise", reason: str = "") -> DeadLetter:
    return DeadLetter.of(
        stage, reason or f"record {n} is {n * 1000:,} bytes", f'{{"n": {n}}}'.encode(),
        occurred_at=at, topic="riskwire.raw.news", key=f"k{n}",
    )  # fmt: skip


def row(sessions: sessionmaker[Session], letter_id: str) -> DeadLetterRow:
    with sessions() as session:
        found = session.get(DeadLetterRow, letter_id)
        assert found is not None
        session.expunge(found)
        return found


def test_a_letter_seen_again_moves_its_last_seen_time_and_reason_and_an_older_copy_does_not(
    sessions: sessionmaker[Session],
) -> None:
    first = letter(1, T0, reason="not valid JSON")
    later = first.model_copy(update={"occurred_at": T0 + timedelta(hours=1), "reason": "kind"})
    with sessions.begin() as session:
        insert_dead_letters(session, [first, first])  # redelivered in one batch
    with sessions.begin() as session:
        insert_dead_letters(session, [later])
    with sessions.begin() as session:
        insert_dead_letters(session, [first])  # an old copy redelivered after the newer one
    stored = row(sessions, first.id)
    assert (stored.occurred_at, stored.last_seen_at, stored.reason) == (
        T0, T0 + timedelta(hours=1), "kind"
    )  # fmt: skip
    with sessions.begin() as session:  # both in one batch, the newer first
        insert_dead_letters(session, [letter(2, T0 + timedelta(hours=2)), letter(2, T0)])
    two = row(sessions, letter(2).id)
    assert (two.occurred_at, two.last_seen_at) == (T0, T0 + timedelta(hours=2))
    with sessions() as session:
        assert count(session, Selection()) == 2


def test_status_follows_a_redrive_and_a_failure_after_it(sessions: sessionmaker[Session]) -> None:
    letters = [letter(n) for n in range(3)]
    with sessions.begin() as session:
        insert_dead_letters(session, letters)
    assert {status_of(row(sessions, d.id)) for d in letters} == {DEAD}
    sent_at = T0 + timedelta(minutes=5)
    with sessions.begin() as session:
        mark_redriven(session, [letters[0].id, letters[1].id], sent_at)
    with sessions.begin() as session:  # letter 1 is refused again after it was sent
        insert_dead_letters(
            session, [letters[1].model_copy(update={"occurred_at": sent_at + timedelta(seconds=1)})]
        )
        insert_dead_letters(session, [letters[0]])  # a copy from before the redrive: no news
    assert [status_of(row(sessions, d.id)) for d in letters] == [REDRIVEN, FAILED_AGAIN, DEAD]
    assert row(sessions, letters[1].id).redrives == 1
    with sessions() as session:
        for status, expected in ((DEAD, 2), (REDRIVEN, 0), (FAILED_AGAIN, 1)):
            found = find(session, Selection(statuses=(status,)))
            assert [r.id for r in found] == [letters[expected].id]
        both = find(session, Selection(statuses=(DEAD, FAILED_AGAIN)))
        assert {r.id for r in both} == {letters[1].id, letters[2].id}


def test_selections_by_id_prefix_stage_reason_and_time(sessions: sessionmaker[Session]) -> None:
    letters = [
        letter(1, T0, "normalise", "schema 'raw/9' is not 'raw/1'"),
        letter(2, T0 + timedelta(hours=1), "score", "scoring failed: RuntimeError 50%_off"),
        letter(3, T0 + timedelta(hours=2), "risk", "unexpected KeyError"),
    ]
    with sessions.begin() as session:
        insert_dead_letters(session, letters)
    with sessions() as session:

        def ids(selection: Selection, **kwargs: object) -> list[str]:
            return [r.id for r in find(session, selection, **kwargs)]  # type: ignore[arg-type]

        assert ids(Selection()) == [d.id for d in reversed(letters)]  # the latest seen first
        assert ids(Selection(ids=(letters[1].id[:8],))) == [letters[1].id]
        assert ids(Selection(stages=("normalise", "risk"))) == [letters[2].id, letters[0].id]
        assert ids(Selection(reason="SCHEMA")) == [letters[0].id]
        assert ids(Selection(reason="50%_")) == [letters[1].id]  # LIKE characters are literal
        assert ids(Selection(reason="0%_")) == [letters[1].id]
        assert ids(Selection(reason="%")) == [letters[1].id]
        assert ids(Selection(since=T0 + timedelta(minutes=30))) == [letters[2].id, letters[1].id]
        assert ids(Selection(until=T0 + timedelta(minutes=30))) == [letters[0].id]
        # oldest first, in pages that start past the last one read
        assert ids(Selection(), oldest_first=True, limit=2) == [letters[0].id, letters[1].id]
        after = (letters[1].occurred_at, letters[1].id)
        assert ids(Selection(), oldest_first=True, after=after) == [letters[2].id]
    with pytest.raises(ValueError, match="not a dead letter id"):
        Selection(ids=("abc",))
    with pytest.raises(ValueError, match="unknown status"):
        Selection(statuses=("buried",))


def test_the_summary_counts_letters_by_stage_and_cause(sessions: sessionmaker[Session]) -> None:
    letters = [letter(n) for n in range(1, 5)] + [letter(9, stage="risk", reason="unexpected X")]
    with sessions.begin() as session:
        insert_dead_letters(session, letters)
        mark_redriven(session, [letters[0].id], T0 + timedelta(minutes=1))
    with sessions() as session:
        tallies = summarise(session, Selection())
    assert [
        (t.stage, t.reason, t.letters, t.dead, t.redriven, t.failed_again) for t in tallies
    ] == [
        ("normalise", "record N is N bytes", 4, 3, 1, 0),
        ("risk", "unexpected X", 1, 1, 0, 0),
    ]
    assert tallies[0].last_seen_at == T0


def test_the_migration_keeps_stored_letters_and_marks_cut_payloads_inexact(
    database_url: str,
) -> None:
    upgrade(database_url, "0011")
    engine = make_engine(database_url)
    old = {c["name"] for c in inspect(engine).get_columns("dead_letters")}
    assert "last_seen_at" not in old
    cut = "x" * MAX_DEAD_PAYLOAD + "... [truncated: 70000 characters in all]"
    before = sa.table(  # the table as revision 0011 has it
        "dead_letters", *(sa.column(c) for c in ("id", "stage", "reason", "topic", "key", "payload")),
        sa.column("occurred_at", UtcDateTime()),
    )  # fmt: skip
    with engine.begin() as conn:
        for ident, payload in (("a" * 32, '{"n": 1}'), ("b" * 32, cut)):
            conn.execute(
                sa.insert(before).values(
                    id=ident,
                    stage="normalise",
                    reason="r",
                    topic="t",
                    key=None,
                    payload=payload,
                    occurred_at=T0,
                )
            )
    upgrade(database_url)
    table = DeadLetterRow.__table__
    with engine.connect() as conn:
        rows = conn.execute(
            select(table.c.id, table.c.last_seen_at, table.c.payload_exact, table.c.redrives)
            .order_by(table.c.id)
        ).tuples().all()  # fmt: skip
    assert [(r[0][0], r[1], r[2], r[3]) for r in rows] == [("a", T0, True, 0), ("b", T0, False, 0)]
    downgrade(database_url, "0011")
    assert "last_seen_at" not in {c["name"] for c in inspect(engine).get_columns("dead_letters")}
    engine.dispose()
