"""Documents and analysts' labels over HTTP: a document as the models judged it (``GET
/documents/{id}``, with ``alerts:read``), and labelling it (``labels`` scope): what a desk's tool or
the live page calls when an analyst says a score is wrong."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, HTTPException, Query, Response
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from riskwire.delivery.api import Principal, Require, decode_cursor, encode_cursor
from storage import labels as store
from storage.labels import MAX_NOTE, LabelError, LabelSelection, UnknownDocument
from storage.tables import DocumentLabelRow, DocumentRow, DocumentTickerRow, ScoreRow, VoteRow

ADMIN_LABELLER = "admin"


class LabelIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    label: Literal["negative", "neutral", "positive"]
    note: str | None = Field(None, max_length=MAX_NOTE)


def labeller_of(principal: Principal) -> str:
    """Who a label is by: the API key's id, or ``admin`` for the admin token."""
    return principal.key_id or ADMIN_LABELLER


def label_out(row: DocumentLabelRow) -> dict[str, Any]:
    return {"document_id": row.document_id, "labeller": row.labeller, "label": row.label,
            "note": row.note, "labelled_at": row.labelled_at.isoformat()}  # fmt: skip


def _cursor(row: DocumentLabelRow) -> str:
    return encode_cursor(row.labelled_at, row.document_id, row.labeller)


def _after(cursor: str | None) -> tuple[datetime, str, str] | None:
    parts = decode_cursor(cursor, 3)
    if parts is None:
        return None
    try:
        return datetime.fromisoformat(parts[0]), str(parts[1]), str(parts[2])
    except (TypeError, ValueError):
        raise HTTPException(422, "cursor is not one this API gave out") from None


def document_view(session: Session, document_id: str) -> dict[str, Any] | None:
    """A document with its tickers, the live scores of every model version that scored it, the
    member votes stored for it and the analysts' labels."""
    doc = session.get(DocumentRow, document_id)
    if doc is None:
        return None
    tickers = session.scalars(
        select(DocumentTickerRow).where(DocumentTickerRow.document_id == document_id)
        .order_by(DocumentTickerRow.ticker)
    )  # fmt: skip
    scores = session.scalars(
        select(ScoreRow).where(ScoreRow.run_id == "live", ScoreRow.document_id == document_id)
        .order_by(ScoreRow.model_version)
    )  # fmt: skip
    votes = session.scalars(
        select(VoteRow).where(VoteRow.document_id == document_id)
        .order_by(VoteRow.member, VoteRow.model_version)
    )  # fmt: skip
    return {
        "id": doc.id, "source": doc.source, "kind": doc.kind, "lang": doc.lang,
        "title": doc.title, "text": doc.text, "url": doc.url,
        "published_at": doc.published_at.isoformat(), "fetched_at": doc.fetched_at.isoformat(),
        "story_id": doc.story_id,
        "tickers": [{"ticker": t.ticker, "relevance": t.relevance} for t in tickers],
        "scores": [
            {"model_version": s.model_version, "label": s.label,
             "probabilities": {"negative": s.p_negative, "neutral": s.p_neutral,
                               "positive": s.p_positive},
             "score": s.score, "confidence": s.confidence, "disagreement": s.disagreement}
            for s in scores
        ],
        "votes": [
            {"member": v.member, "model_version": v.model_version, "label": v.label,
             "probabilities": {"negative": v.p_negative, "neutral": v.p_neutral,
                               "positive": v.p_positive}}
            for v in votes
        ],
        "labels": [label_out(r) for r in store.of_document(session, document_id)],
    }  # fmt: skip


def labels_router(sessions: sessionmaker[Session], require: Require) -> APIRouter:
    router = APIRouter(tags=["labels"])
    labeller = Depends(require("labels"))
    reader = Depends(require("alerts:read"))

    @router.get("/documents/{document_id}")
    def get_document(document_id: str, principal: Principal = reader) -> dict[str, Any]:
        """A document as the models judged it: live scores, member votes and analysts' labels."""
        with sessions() as session:
            view = document_view(session, document_id)
        if view is None:
            raise HTTPException(404, f"no document {document_id!r}")
        return view

    @router.put("/documents/{document_id}/label")
    def put_label(
        document_id: str, body: LabelIn, principal: Principal = labeller
    ) -> dict[str, Any]:
        """Say what a document's sentiment is: the caller's label, replacing theirs before."""
        try:
            with sessions.begin() as session:
                row = store.put(session, document_id, labeller_of(principal), body.label,
                                datetime.now(UTC), body.note)  # fmt: skip
                return label_out(row)
        except UnknownDocument as exc:
            raise HTTPException(404, str(exc)) from None
        except LabelError as exc:
            raise HTTPException(422, str(exc)) from None

    @router.delete("/documents/{document_id}/label", status_code=204)
    def delete_label(document_id: str, principal: Principal = labeller) -> Response:
        """Take the caller's label of a document back."""
        with sessions.begin() as session:
            if not store.remove(session, document_id, labeller_of(principal)):
                raise HTTPException(404, f"no label of yours on {document_id!r}")
        return Response(status_code=204)

    @router.get("/labels")
    def list_labels(
        principal: Principal = labeller,
        since: AwareDatetime | None = None,
        until: AwareDatetime | None = None,
        labeller_: Annotated[list[str] | None, Query(alias="labeller")] = None,
        kind: Literal["news", "social"] | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """Labels, the latest first (labelled in ``[since, until)``, by these labellers, of
        documents of this kind)."""
        selection = LabelSelection(since, until, tuple(labeller_ or ()), kind)
        with sessions() as session:
            rows = store.page(session, selection, _after(cursor), limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return {"items": [label_out(r) for r in rows],
                "next_cursor": _cursor(rows[-1]) if more else None}  # fmt: skip

    @router.get("/labels/queue")
    def label_queue(
        principal: Principal = labeller,
        since: Annotated[
            AwareDatetime | None,
            Query(description="published since; default: the week before the newest score"),
        ] = None,
        rank: Literal["uncertainty", "disagreement"] = "uncertainty",
        kind: Literal["news", "social"] | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 20,
    ) -> dict[str, Any]:
        """Documents worth labelling next: unlabelled, scored live, where the models were least
        sure (or argued most), one per story."""
        with sessions() as session:
            found = store.queue(session, since, limit, rank, kind)
            return {"items": [queued_out(doc, score) for doc, score in found]}

    return router


def queued_out(doc: DocumentRow, score: ScoreRow) -> dict[str, Any]:
    return {
        "document_id": doc.id, "kind": doc.kind, "source": doc.source, "title": doc.title,
        "text": doc.text, "published_at": doc.published_at.isoformat(),
        "model_version": score.model_version, "label": score.label, "score": score.score,
        "confidence": score.confidence, "disagreement": score.disagreement,
    }  # fmt: skip
