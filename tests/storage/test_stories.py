"""The shared story index, on SQLite and PostgreSQL: two workers' indexes over one database cluster
one story's copies together, a redelivered document gets its first answer, copies are counted
once each, and stories are forgotten after the horizon."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import TickerLink
from storage.stories import SharedStoryIndex
from storage.tables import StoryKeyRow, StoryMemberRow, StoryRow
from streams.pipeline.stories import StoryAssignment, StoryIndex
from tests.factories import T0, make_document

ORIGINAL = "Acme Corp shares slump 12% after the drugmaker's late-stage trial misses its main goal"
COPIES = [
    "(Reuters) - Acme Corp shares slump 12% after the drugmaker's late-stage trial misses its main goal",
    "RT @wire: Acme Corp shares slump 12% after the drugmaker's late-stage trial misses its main goal",
    "Acme Corp shares slump 12% after drugmaker's late-stage trial misses its main goal",
]
OTHER = "Acme Corp opens a new research campus in Boston with 400 jobs"


def doc(text: str, minutes: int = 0, ticker: str = "ACME"):  # type: ignore[no-untyped-def]
    return make_document(
        text=text, title=text, published_at=T0 + timedelta(minutes=minutes),
        tickers=(TickerLink(ticker=ticker, relevance=1.0),),
    )  # fmt: skip


def assign(index: SharedStoryIndex, sessions: sessionmaker[Session], docs: list) -> list:  # type: ignore[type-arg]
    with sessions.begin() as session:
        return index.assign(session, docs)


def test_copies_reaching_different_workers_join_one_story(
    sessions: sessionmaker[Session],
) -> None:
    first_worker, second_worker = SharedStoryIndex(), SharedStoryIndex()
    original = doc(ORIGINAL)
    (a,) = assign(first_worker, sessions, [original])
    assert a == StoryAssignment(original.id, 1.0, 0, 1.0)

    copies = [doc(text, minutes=5 + i) for i, text in enumerate(COPIES)]
    other = doc(OTHER, minutes=9)
    got = assign(second_worker, sessions, [copies[0], other, copies[1]])
    got += assign(first_worker, sessions, [copies[2]])
    assert [g.story_id for g in got] == [original.id, other.id, original.id, original.id]
    assert [g.copy for g in got] == [1, 0, 2, 3]
    assert [g.novelty for g in got] == [0.5, 1.0, 0.25, 0.125]
    assert all(g.similarity >= 0.5 for g in got)


def test_a_redelivered_document_gets_its_first_answer_and_counts_once(
    sessions: sessionmaker[Session],
) -> None:
    index = SharedStoryIndex()
    original, copy = doc(ORIGINAL), doc(COPIES[0], minutes=1)
    first = assign(index, sessions, [original, copy, copy])  # twice in one batch, too
    again = assign(SharedStoryIndex(), sessions, [copy, original])  # a restarted worker
    assert first[1] == first[2] == again[0] and again[1] == first[0]
    assert first[1].story_id == original.id and first[1].copy == 1
    with sessions() as session:
        assert session.scalar(select(StoryRow.copies)) == 1
        assert session.scalar(select(func.count()).select_from(StoryMemberRow)) == 1  # the copy


def test_ids_and_tickers_with_quotes_braces_and_commas_are_stored_as_they_are(
    sessions: sessionmaker[Session],
) -> None:
    """On PostgreSQL the new stories go to the database as array literals written here: every
    character such a literal treats specially must come back unchanged."""
    odd = 'we"ird\\id, {x} NULL'
    original = make_document(
        id=odd, text=ORIGINAL, title=ORIGINAL, published_at=T0,
        tickers=(TickerLink(ticker='A\\"B,{C}', relevance=1.0),),
    )  # fmt: skip
    copy = doc(COPIES[0], minutes=1, ticker='A\\"B,{C}')
    first = assign(SharedStoryIndex(), sessions, [original])
    again = assign(SharedStoryIndex(), sessions, [copy])  # found through the stored story
    assert first[0].story_id == again[0].story_id == odd and again[0].copy == 1
    with sessions() as session:
        story = session.scalars(select(StoryRow)).one()
        assert (story.story_id, story.tickers) == (odd, 'A\\"B,{C}')
        assert story.started_at.replace(tzinfo=T0.tzinfo) == T0


def test_two_workers_starting_one_story_at_once_store_it_and_its_keys_once(
    sessions: sessionmaker[Session],
) -> None:
    """The second worker's insert waits for the first's transaction, then leaves the story and
    its band keys to it (on SQLite one writer at a time: the second could not even begin)."""
    if sessions.kw["bind"].dialect.name != "postgresql":
        pytest.skip("concurrent writers: PostgreSQL only")
    original = doc(ORIGINAL)
    first = sessions()
    first.begin()
    mine = SharedStoryIndex().assign(first, [original])  # not committed yet
    with ThreadPoolExecutor(1) as pool:
        theirs = pool.submit(assign, SharedStoryIndex(), sessions, [original])
        time.sleep(0.3)
        assert not theirs.done()  # waiting on the first worker's row
        first.commit()
        first.close()
        assert theirs.result(timeout=10) == mine
    keys = len({k for k in StoryIndex().document_fingerprints([original])[original.id].keys})
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(StoryRow)) == 1
        assert session.scalar(select(func.count()).select_from(StoryKeyRow)) == keys > 0


def test_a_copy_about_another_company_or_with_other_numbers_is_another_story(
    sessions: sessionmaker[Session],
) -> None:
    index = SharedStoryIndex()
    original = doc(ORIGINAL)
    elsewhere = doc(ORIGINAL, minutes=1, ticker="BOLT")
    other_number = doc(ORIGINAL.replace("12%", "21%"), minutes=2)
    got = assign(index, sessions, [original, elsewhere, other_number])
    assert [g.story_id for g in got] == [original.id, elsewhere.id, other_number.id]


def test_a_stored_story_is_matched_on_its_numbers_by_every_worker(
    sessions: sessionmaker[Session],
) -> None:
    first, second = SharedStoryIndex(), SharedStoryIndex()  # two workers
    original = doc(ORIGINAL)
    assign(first, sessions, [original])
    other_number = doc(ORIGINAL.replace("12%", "21%"), minutes=1)
    copy = doc(COPIES[0], minutes=2)
    got = assign(second, sessions, [other_number, copy])
    assert [g.story_id for g in got] == [other_number.id, original.id]
    assert got[1].copy == 1
    # the first worker has the story's row from before; the count is the database's
    (again,) = assign(first, sessions, [doc(COPIES[1], minutes=3)])
    assert (again.story_id, again.copy) == (original.id, 2)


def test_stories_are_forgotten_after_the_horizon(sessions: sessionmaker[Session]) -> None:
    index = SharedStoryIndex(StoryIndex(horizon=timedelta(days=1)), prune_every=1)
    old = doc(ORIGINAL)
    assign(index, sessions, [old])
    later = doc(COPIES[0], minutes=2 * 24 * 60)
    (got,) = assign(index, sessions, [later])
    assert got.story_id == later.id  # too late to join: a story of its own
    with sessions() as session:  # and the old story's rows are gone
        assert set(session.scalars(select(StoryRow.story_id))) == {later.id}
        assert set(session.scalars(select(StoryKeyRow.story_id))) == {later.id}
        assert set(session.scalars(select(StoryMemberRow.document_id))) == set()


def test_the_shared_index_clusters_as_the_in_memory_one(sessions: sessionmaker[Session]) -> None:
    texts = [ORIGINAL, OTHER, *COPIES, OTHER.replace("Boston", "Austin"), "RT @x: " + OTHER]
    docs = [doc(t, minutes=i) for i, t in enumerate(texts)]
    memory = StoryIndex()
    want = [memory.assign(d.id, d.text, d.published_at, ["ACME"]) for d in docs]
    shared = SharedStoryIndex()
    got = assign(shared, sessions, docs[:3]) + assign(shared, sessions, docs[3:])
    assert got == want


def test_the_ingest_bench_measures_the_shared_index_as_the_worker_runs_it(
    database_url: str,
) -> None:
    from bench.ingest import run

    result = run(documents=600, database_url=database_url)
    assert result["shared_same_stories"] is True
    assert result["shared_cluster_per_s"] > 0 and result["copies_found"] > 50
    assert result["shared_database"] == database_url.split(":")[0].split("+")[0]


def test_within_a_batch_the_earliest_copy_is_the_story_s_first(
    sessions: sessionmaker[Session],
) -> None:
    """A batch interleaves partitions: its documents are taken in event-time order, and the
    answers come back in the batch's order."""
    copy, original = doc(COPIES[0], minutes=5), doc(ORIGINAL, minutes=0)
    got = assign(SharedStoryIndex(), sessions, [copy, original])
    assert got == [StoryAssignment(original.id, 0.5, 1, got[0].similarity),
                   StoryAssignment(original.id, 1.0, 0, 1.0)]  # fmt: skip
