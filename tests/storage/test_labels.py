"""Analysts' labels (``storage.labels``), on SQLite and PostgreSQL: one per document and labeller,
a relabel replacing it; majority resolution; pages that never shift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.records import Kind
from storage import labels, repository
from storage.labels import LabelError, LabelSelection, UnknownDocument, resolve
from storage.tables import DocumentLabelRow
from tests.factories import make_document, make_score

T0 = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


def test_majority_resolves_a_document_and_a_tie_resolves_nothing() -> None:
    judged = resolve([
        ("a", "negative"), ("a", "negative"), ("a", "neutral"),  # two against one
        ("b", "positive"),  # one labeller
        ("c", "negative"), ("c", "positive"),  # tied
        ("d", "neutral"), ("d", "neutral"), ("d", "positive"), ("d", "negative"),
    ])  # fmt: skip
    assert judged.labels == {"a": "negative", "b": "positive", "d": "neutral"}
    assert judged.labellers == {"a": 3, "b": 1, "d": 4}
    assert judged.tied == ["c"]
    assert judged.disputed == 2  # a and d
    assert resolve([]).labels == {}


def test_a_label_is_one_per_document_and_labeller_and_a_relabel_replaces_it(
    sessions: sessionmaker[Session],
) -> None:
    doc = make_document(kind="social")
    with sessions.begin() as session:
        repository.upsert_documents(session, [doc])
        assert labels.latest(session) is None
    with sessions.begin() as session:
        labels.put(session, doc.id, "ana", "negative", T0, note="profit warning")
        labels.put(session, doc.id, "ana", "negative", T0)  # a retried request
        labels.put(session, doc.id, "bo", "neutral", T0 + timedelta(minutes=1))
    with sessions.begin() as session:
        row = labels.put(session, doc.id, " ana ", "neutral", T0 + timedelta(hours=1))
        assert (row.labeller, row.label, row.note) == ("ana", "neutral", None)
    with sessions() as session:
        rows = labels.of_document(session, doc.id)
        assert [(r.labeller, r.label, r.labelled_at) for r in rows] == [
            ("bo", "neutral", T0 + timedelta(minutes=1)), ("ana", "neutral", T0 + timedelta(hours=1))
        ]  # fmt: skip
        assert labels.resolved(session).labels == {doc.id: "neutral"}
        assert labels.resolved(session, LabelSelection(kind="news")).labels == {}
        for selection, found in [
            (LabelSelection(tickers=("ACME", "BETA")), True),
            (LabelSelection(tickers=("BETA",)), False),
            (LabelSelection(published_from=doc.published_at), True),
            (LabelSelection(published_to=doc.published_at), False),  # the period's end: out
        ]:
            assert bool(labels.resolved(session, selection).labels) is found, selection
        assert labels.counts(session) == {"ana": 1, "bo": 1}
        assert labels.latest(session) == T0 + timedelta(hours=1)  # the relabel's time, in UTC
    with sessions.begin() as session:
        assert labels.remove(session, doc.id, "bo")
        assert not labels.remove(session, doc.id, "bo")
    with sessions() as session:
        assert labels.counts(session) == {"ana": 1}


def test_what_cannot_be_a_label_is_refused_with_the_reason(sessions: sessionmaker[Session]) -> None:
    doc = make_document()
    with sessions.begin() as session:
        repository.upsert_documents(session, [doc])
    with sessions.begin() as session:
        with pytest.raises(UnknownDocument, match="no document"):
            labels.put(session, "f" * 32, "ana", "negative", T0)
        with pytest.raises(LabelError, match="not one of negative, neutral, positive"):
            labels.put(session, doc.id, "ana", "bearish", T0)
        with pytest.raises(LabelError, match="labeller"):
            labels.put(session, doc.id, "  ", "negative", T0)
        with pytest.raises(LabelError, match="note"):
            labels.put(session, doc.id, "ana", "negative", T0, note="x" * 2001)
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(DocumentLabelRow)) == 0


def test_pages_of_labels_cover_every_label_once_even_at_one_instant(
    sessions: sessionmaker[Session],
) -> None:
    docs = [make_document() for _ in range(4)]
    with sessions.begin() as session:
        repository.upsert_documents(session, docs)
        for n, doc in enumerate(docs):
            for who in ("ana", "bo", "cy"):  # three labellers at one instant per document
                labels.put(session, doc.id, who, "positive", T0 + timedelta(minutes=n // 2))
    seen: list[tuple[str, str]] = []
    after = None
    with sessions() as session:
        while True:
            page = labels.page(session, LabelSelection(), after, 5)
            if not page:
                break
            seen.extend((r.document_id, r.labeller) for r in page)
            last = page[-1]
            after = (last.labelled_at, last.document_id, last.labeller)
        assert len(seen) == len(set(seen)) == 12
        assert [d for d, _ in seen[:3]] == [docs[3].id] * 3  # the latest first
        since = labels.page(session, LabelSelection(since=T0 + timedelta(minutes=1)), None, 50)
        assert {r.document_id for r in since} == {docs[2].id, docs[3].id}
        ana = labels.page(session, LabelSelection(labellers=("ana",)), None, 50)
        assert len(ana) == 4


def test_the_queue_offers_unlabelled_documents_the_models_were_least_sure_of_once_per_story(
    sessions: sessionmaker[Session],
) -> None:
    sure, unsure, copy, labelled, old, social = (
        make_document(published_at=T0 + timedelta(minutes=n)) for n in range(6)
    )
    copy = copy.model_copy(update={"story_id": unsure.id})  # a copy of unsure's story
    unsure = unsure.model_copy(update={"story_id": unsure.id})
    social = social.model_copy(update={"kind": Kind.SOCIAL})
    old = old.model_copy(update={"published_at": T0 - timedelta(days=30)})
    docs = [sure, unsure, copy, labelled, old, social]
    # (confidence, disagreement) of each live score
    judged = [(0.9, 0.05), (0.4, 0.2), (0.35, 0.3), (0.3, 0.9), (0.2, 0.9), (0.5, 0.6)]
    with sessions.begin() as session:
        repository.upsert_documents(session, docs)
        repository.upsert_scores(session, [
            make_score(d.id, ticker=None, published_at=d.published_at, confidence=c,
                       disagreement=g)
            for d, (c, g) in zip(docs, judged, strict=True)
        ] + [make_score(sure.id, ticker=None, published_at=sure.published_at, confidence=0.1,
                        run_id="replay-1")])  # a replay's doubt is not the live models'  # fmt: skip
        labels.put(session, labelled.id, "ana", "negative", T0)
    since = T0 - timedelta(days=1)
    with sessions() as session:
        by_doubt = [d.id for d, _ in labels.queue(session, since, 10)]
        # copy (0.35) stands for its story; unsure (0.4) is that story again; labelled and old out
        assert by_doubt == [copy.id, social.id, sure.id]
        by_dispute = [d.id for d, _ in labels.queue(session, since, 10, "disagreement")]
        assert by_dispute == [social.id, copy.id, sure.id]
        assert [d.id for d, _ in labels.queue(session, since, 1)] == [copy.id]
        # by default the week before the newest live score: old is a month before it
        assert [d.id for d, _ in labels.queue(session, None, 10)] == by_doubt
        news = labels.queue(session, since, 10, kind="news")
        assert social.id not in [d.id for d, _ in news]
        with pytest.raises(LabelError, match="rank"):
            labels.queue(session, since, 10, "loudness")
