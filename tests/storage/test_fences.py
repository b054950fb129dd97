"""A worker acquires a partition (a new epoch) before writing its results, and each write checks the
epoch is still its own: a writer that lost the partition without noticing is refused, on SQLite
and PostgreSQL alike."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import select
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from storage import make_engine, session_factory, upgrade
from storage.fences import OWNER, Fenced, acquire, check
from storage.tables import StreamFenceRow


def epochs(sessions: sessionmaker[Session], topic: str = "t.scored") -> dict[int, int]:
    with sessions() as session:
        rows = session.scalars(select(StreamFenceRow).where(StreamFenceRow.topic == topic))
        return {r.partition: r.epoch for r in rows}


def test_a_writer_is_refused_once_another_has_acquired_its_partition(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        old = acquire(session, "t.scored", [1, 0], generation=3)
        acquire(session, "t.groups", [0], generation=3)  # another topic's partitions are its own
    assert old == {0: 1, 1: 1} and epochs(sessions) == {0: 1, 1: 1}
    with sessions.begin() as session:
        check(session, "t.scored", old)  # still its own
        check(session, "t.scored", {})  # nothing to check

    with sessions.begin() as session:  # a rebalance: 1 moves to another worker, 2 is new
        new = acquire(session, "t.scored", [1, 2], generation=1)  # generations can start over
    assert new == {1: 2, 2: 1} and epochs(sessions) == {0: 1, 1: 2, 2: 1}

    with pytest.raises(Fenced) as refused, sessions.begin() as session:
        check(session, "t.scored", old)  # the old owner of 1 wakes up
    assert refused.value.partitions == {1: (2, OWNER)}
    assert "partitions 1 (epoch 2" in str(refused.value)
    with sessions.begin() as session:
        check(session, "t.scored", {0: old[0]})  # what it still owns, it still writes
        check(session, "t.scored", new)
    with pytest.raises(Fenced), sessions.begin() as session:
        check(session, "t.scored", {7: 1})  # never acquired by anyone
    assert epochs(sessions, "t.groups") == {0: 1}


def test_an_acquisition_rolled_back_leaves_the_epoch_as_it_was(
    sessions: sessionmaker[Session],
) -> None:
    with sessions.begin() as session:
        token = acquire(session, "t.scored", [0])
    with pytest.raises(RuntimeError), sessions.begin() as session:
        acquire(session, "t.scored", [0])
        raise RuntimeError("the transaction failed")
    with sessions.begin() as session:
        check(session, "t.scored", token)


@pytest.mark.integration
def test_acquiring_waits_for_a_write_under_way_then_refuses_the_next(postgres_url: str) -> None:
    """The old owner's transaction holds the partition's row to its end: the new owner waits for
    it (and then reads what it wrote); the old owner's next write is refused."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    sessions = session_factory(engine)
    with sessions.begin() as session:
        token = acquire(session, "t.scored", [0], generation=1)
    old = sessions()
    old.begin()
    check(old, "t.scored", token)  # a write under way, then a pause
    acquired = threading.Event()

    def new_owner() -> None:
        with sessions.begin() as session:
            acquire(session, "t.scored", [0], generation=2)
        acquired.set()

    thread = threading.Thread(target=new_owner)
    thread.start()
    time.sleep(0.5)
    assert not acquired.is_set()  # waiting for the old owner's transaction
    old.commit()
    thread.join(10)
    assert acquired.is_set()
    with pytest.raises(Fenced), sessions.begin() as session:
        check(session, "t.scored", token)
    old.close()
    engine.dispose()


@pytest.mark.integration
def test_a_writer_paused_mid_transaction_holds_its_partition_only_so_long(
    postgres_url: str,
) -> None:
    """A writer that stops in the middle of a transaction (paused, or its host gone without
    closing the connection) holds the fence row it checked. On an engine with an idle-transaction
    limit, PostgreSQL ends that transaction once the limit is past: the new owner gets the
    partition then, not when (if ever) the old one wakes, and nothing of the old one's
    transaction is stored."""
    upgrade(postgres_url)
    engine = make_engine(postgres_url)
    limited = make_engine(postgres_url, idle_transaction_s=1.0)
    sessions, paused_sessions = session_factory(engine), session_factory(limited)
    with sessions.begin() as session:
        token = acquire(session, "t.scored", [0], generation=1)
    old = paused_sessions()
    old.begin()
    check(old, "t.scored", token)
    acquire(old, "t.groups", [3])  # something written in the transaction, then a pause
    started = time.monotonic()
    with sessions.begin() as session:  # waits for the old owner's transaction to be ended
        assert acquire(session, "t.scored", [0], generation=2) == {0: 2}
    waited = time.monotonic() - started
    assert 0.5 < waited < 8, waited  # the limit (1 s) and the server's timer, not the pause
    with pytest.raises(DBAPIError) as ended:
        old.commit()  # the old owner wakes: its connection is gone, and its transaction
    assert "idle-in-transaction" in str(ended.value) or ended.value.connection_invalidated
    old.close()
    assert epochs(sessions, "t.groups") == {}
    with pytest.raises(Fenced), sessions.begin() as session:
        check(session, "t.scored", token)  # started again, it is refused
    limited.dispose()
    engine.dispose()
