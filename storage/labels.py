"""Analysts' labels: their judgement of a document's sentiment, beside what the models said.

One row per document and labeller, so labelling again replaces the earlier judgement (and a
retried request stores nothing twice). Where labellers disagree a document's label is the
majority's; a tie leaves it unresolved (``resolve``), counted and left out of what is exported.
Labelled documents are kept by retention (``storage.retention``): they are the one piece of
evaluation data drawn from the feeds themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, and_, delete, func, or_, select
from sqlalchemy.orm import Session

from riskwire.records import LABELS
from storage.repository import _insert
from storage.tables import DocumentLabelRow, DocumentRow, DocumentTickerRow, ScoreRow

MAX_LABELLER = 200
MAX_NOTE = 2000


class LabelError(ValueError):
    """A label that cannot be stored: an unknown label, a labeller or note out of bounds."""


class UnknownDocument(LabelError):
    """No document has that id (never stored, or pruned)."""


def put(
    session: Session,
    document_id: str,
    labeller: str,
    label: str,
    at: datetime,
    note: str | None = None,
) -> DocumentLabelRow:
    """Store ``labeller``'s judgement of a document, replacing theirs before (idempotent)."""
    if label not in LABELS:
        raise LabelError(f"label {label!r} is not one of {', '.join(LABELS)}")
    labeller = labeller.strip()
    if not labeller or len(labeller) > MAX_LABELLER:
        raise LabelError(f"a labeller is named by 1 to {MAX_LABELLER} characters")
    if note is not None and len(note) > MAX_NOTE:
        raise LabelError(f"a note holds at most {MAX_NOTE:,} characters")
    if session.get(DocumentRow, document_id) is None:
        raise UnknownDocument(f"no document {document_id!r}")
    values = {"document_id": document_id, "labeller": labeller, "label": label, "note": note,
              "labelled_at": at}  # fmt: skip
    statement: Any = _insert(session, DocumentLabelRow).values(values)
    session.execute(
        statement.on_conflict_do_update(
            index_elements=["document_id", "labeller"],
            set_={
                "label": statement.excluded.label,
                "note": statement.excluded.note,
                "labelled_at": statement.excluded.labelled_at,
            },
        )
    )
    row = session.get(DocumentLabelRow, (document_id, labeller), populate_existing=True)
    assert row is not None
    return row


def remove(session: Session, document_id: str, labeller: str) -> bool:
    """Take ``labeller``'s label of a document back: whether there was one."""
    result = session.execute(
        delete(DocumentLabelRow).where(
            DocumentLabelRow.document_id == document_id, DocumentLabelRow.labeller == labeller
        )
    )
    return bool(getattr(result, "rowcount", 0))


def of_document(session: Session, document_id: str) -> list[DocumentLabelRow]:
    return list(
        session.scalars(
            select(DocumentLabelRow)
            .where(DocumentLabelRow.document_id == document_id)
            .order_by(DocumentLabelRow.labelled_at, DocumentLabelRow.labeller)
        )
    )


@dataclass(frozen=True)
class LabelSelection:
    """Which labels: every condition given holds (labelled in ``[since, until)``, by these
    labellers, of documents of this kind, published in ``[published_from, published_to)``,
    naming one of these tickers)."""

    since: datetime | None = None
    until: datetime | None = None
    labellers: tuple[str, ...] = ()
    kind: str | None = None
    published_from: datetime | None = None
    published_to: datetime | None = None
    tickers: tuple[str, ...] = ()

    def where(self) -> list[ColumnElement[bool]]:
        t = DocumentLabelRow
        clauses: list[ColumnElement[bool]] = []
        if self.since is not None:
            clauses.append(t.labelled_at >= self.since)
        if self.until is not None:
            clauses.append(t.labelled_at < self.until)
        if self.labellers:
            clauses.append(t.labeller.in_(self.labellers))
        d = DocumentRow
        documents: list[ColumnElement[bool]] = []
        if self.kind is not None:
            documents.append(d.kind == self.kind)
        if self.published_from is not None:
            documents.append(d.published_at >= self.published_from)
        if self.published_to is not None:
            documents.append(d.published_at < self.published_to)
        if documents:
            clauses.append(t.document_id.in_(select(d.id).where(*documents)))
        if self.tickers:
            mentions = select(DocumentTickerRow.document_id).where(
                DocumentTickerRow.ticker.in_(self.tickers)
            )
            clauses.append(t.document_id.in_(mentions))
        return clauses


@dataclass
class Resolution:
    """Documents' labels after resolving disagreements: the majority's label per document, and the
    documents whose labellers are tied."""

    labels: dict[str, str] = field(default_factory=dict)
    labellers: dict[str, int] = field(default_factory=dict)  # per resolved document: how many
    tied: list[str] = field(default_factory=list)
    disputed: int = 0  # resolved documents whose labellers did not all agree


def resolve(judgements: Iterable[tuple[str, str]]) -> Resolution:
    """(document id, label) pairs, one per labeller → each document's majority label; a tie
    between the most frequent labels resolves nothing."""
    per_document: dict[str, Counter[str]] = {}
    for document_id, label in judgements:
        per_document.setdefault(document_id, Counter())[label] += 1
    out = Resolution()
    for document_id, counts in per_document.items():
        ranked = counts.most_common()
        if len(ranked) > 1 and ranked[0][1] == ranked[1][1]:
            out.tied.append(document_id)
            continue
        out.labels[document_id] = ranked[0][0]
        out.labellers[document_id] = sum(counts.values())
        out.disputed += len(ranked) > 1
    out.tied.sort()
    return out


def resolved(session: Session, selection: LabelSelection = LabelSelection()) -> Resolution:
    """The selected labels, resolved per document."""
    t = DocumentLabelRow
    rows = session.execute(select(t.document_id, t.label).where(*selection.where())).tuples()
    return resolve(rows)


Row = TypeVar("Row")


def _by_chunks(ids: Sequence[str], fetch: Callable[[Sequence[str]], Iterable[Row]]) -> list[Row]:
    """``fetch`` over ``ids`` 500 at a time (a bound on the statement's parameters)."""
    out: list[Row] = []
    for start in range(0, len(ids), 500):
        out.extend(fetch(ids[start : start + 500]))
    return out


def documents(session: Session, ids: Sequence[str]) -> list[DocumentRow]:
    """The documents of ``ids`` in event-time order (ids without a document are left out)."""
    d = DocumentRow
    out = _by_chunks(ids, lambda chunk: session.scalars(select(d).where(d.id.in_(chunk))))
    out.sort(key=lambda doc: (doc.published_at, doc.id))
    return out


def scores_of(session: Session, ids: Sequence[str], run_id: str = "live") -> list[ScoreRow]:
    """A run's scores of ``ids`` (the live stream's by default), every model version's."""
    s = ScoreRow
    return _by_chunks(
        ids,
        lambda chunk: session.scalars(
            select(s).where(s.run_id == run_id, s.document_id.in_(chunk))
        ),
    )


def counts(session: Session, selection: LabelSelection = LabelSelection()) -> dict[str, int]:
    """Labels given per labeller."""
    t = DocumentLabelRow
    query = select(t.labeller, func.count()).where(*selection.where()).group_by(t.labeller)
    return dict(session.execute(query).tuples().all())


def latest(session: Session) -> datetime | None:
    """When the newest label was given (or last changed); None before the first."""
    return session.scalar(select(func.max(DocumentLabelRow.labelled_at)))


def page(
    session: Session,
    selection: LabelSelection,
    after: tuple[datetime, str, str] | None,
    limit: int,
) -> list[DocumentLabelRow]:
    """Labels newest first, after the (labelled_at, document id, labeller) of the last one a page
    ended with (keyset: a page never shifts while labels are added)."""
    t = DocumentLabelRow
    query = select(t).where(*selection.where())
    if after is not None:
        when, document_id, labeller = after
        query = query.where(
            or_(
                t.labelled_at < when,
                and_(t.labelled_at == when, t.document_id < document_id),
                and_(t.labelled_at == when, t.document_id == document_id, t.labeller < labeller),
            )
        )
    order = (t.labelled_at.desc(), t.document_id.desc(), t.labeller.desc())
    return list(session.scalars(query.order_by(*order).limit(limit)))


RANKS = ("uncertainty", "disagreement")


QUEUE_PERIOD = timedelta(days=7)


def queue(
    session: Session,
    since: datetime | None,
    limit: int,
    rank: str = "uncertainty",
    kind: str | None = None,
) -> list[tuple[DocumentRow, ScoreRow]]:
    """Documents worth an analyst's time: published since ``since`` (default: the week before
    the newest live score) and scored live, labelled by no one, where the models were least sure
    (``uncertainty``: the fused label's probability lowest) or argued most (``disagreement`` among
    the members), one per story (a story's copies would be labelled alike), each with the live
    score that ranked it."""
    if rank not in RANKS:
        raise LabelError(f"rank {rank!r} is not one of {', '.join(RANKS)}")
    s, d = ScoreRow, DocumentRow
    if since is None:
        newest = session.scalar(select(func.max(s.published_at)).where(s.run_id == "live"))
        if newest is None:
            return []
        since = newest - QUEUE_PERIOD
    labelled = select(DocumentLabelRow.document_id).where(
        DocumentLabelRow.document_id == s.document_id
    )
    order = (s.confidence.asc(),) if rank == "uncertainty" else (s.disagreement.desc(),)
    query = (
        select(d, s)
        .join(d, d.id == s.document_id)
        .where(s.run_id == "live", s.published_at >= since, ~labelled.exists())
        .order_by(*order, s.published_at.desc(), s.document_id, s.model_version)
    )
    if kind is not None:
        query = query.where(d.kind == kind)
    out: list[tuple[DocumentRow, ScoreRow]] = []
    seen: set[str] = set()
    result = session.execute(query.execution_options(yield_per=200))  # read until enough
    try:
        for doc, score in result.tuples():
            story = doc.story_id or doc.id
            if doc.id in seen or story in seen:
                continue
            seen.update((doc.id, story))
            out.append((doc, score))
            if len(out) == limit:
                break
    finally:
        result.close()
    return out
