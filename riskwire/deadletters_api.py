"""``/deadletters``: what the stream refused and why, and sending letters back (admin scope), the
HTTP face of ``riskwire deadletters`` for runbooks and tools."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query
from pydantic import BaseModel, Field
from sqlalchemy.orm import Session, sessionmaker

from riskwire.deadletters import describe, describe_tallies, redrive
from riskwire.delivery.api import Require
from riskwire.settings import Settings
from storage import deadletters
from storage.deadletters import STATUSES, Selection

STATUS_HELP = f"any of {', '.join(STATUSES)}"


class RedriveRequest(BaseModel):
    """Which letters to send back: every condition given holds; with none, ``all`` must be true."""

    ids: list[str] = Field(default_factory=list, description="ids, or 8+ digit prefixes")
    stages: list[str] = Field(default_factory=list)
    statuses: list[str] = Field(default_factory=list, description=STATUS_HELP)
    reason: str | None = Field(None, description="the reason contains this (any case)")
    since: datetime | None = Field(None, description="last seen at or after")
    all: bool = Field(False, description="every letter, when nothing else selects")
    again: bool = Field(False, description="letters sent back already, and not failing since")
    limit: int | None = Field(None, ge=1, description="at most this many, the oldest seen first")
    dry_run: bool = Field(False, description="say where each would go; send nothing")


def _selection(**kwargs: Any) -> Selection:
    try:
        return Selection(**kwargs)
    except ValueError as exc:
        raise HTTPException(422, str(exc)) from None


def deadletters_router(
    settings: Settings, sessions: sessionmaker[Session], require: Require
) -> APIRouter:
    router = APIRouter(prefix="/deadletters", tags=["dead letters"],
                       dependencies=[Depends(require("admin"))])  # fmt: skip

    @router.get("")
    def list_letters(
        stage: Annotated[list[str] | None, Query()] = None,
        status: Annotated[list[str] | None, Query(description=STATUS_HELP)] = None,
        reason: str | None = None,
        since: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> dict[str, Any]:
        """Dead letters, the latest seen first, without their payloads."""
        selection = _selection(stages=tuple(stage or ()), statuses=tuple(status or ()),
                               reason=reason, since=since)  # fmt: skip
        with sessions() as session:
            rows = deadletters.find(session, selection, limit)
            return {
                "total": deadletters.count(session, selection),
                "letters": [describe(r) for r in rows],
            }

    @router.get("/summary")
    def summary(
        stage: Annotated[list[str] | None, Query()] = None,
        status: Annotated[list[str] | None, Query(description=STATUS_HELP)] = None,
        since: datetime | None = None,
    ) -> dict[str, Any]:
        """Letters counted by stage and cause (the reason with its particulars folded)."""
        selection = _selection(stages=tuple(stage or ()), statuses=tuple(status or ()),
                               since=since)  # fmt: skip
        with sessions() as session:
            return describe_tallies(deadletters.summarise(session, selection))

    @router.get("/{letter_id}")
    def get_letter(letter_id: str) -> dict[str, Any]:
        """One letter whole, payload included (an id, or its first 8 or more hex digits)."""
        selection = _selection(ids=(letter_id.lower(),))
        with sessions() as session:
            rows = deadletters.find(session, selection, 2)
            if not rows:
                raise HTTPException(404, f"no dead letter {letter_id}")
            if len(rows) > 1:
                raise HTTPException(409, f"{letter_id} names more than one dead letter")
            return describe(rows[0], payload=True)

    @router.post("/redrive")
    def redrive_letters(request: RedriveRequest) -> dict[str, Any]:
        """Send letters back into the stream once their cause is fixed (see the README, Delivery
        guarantees): where each goes, and why some cannot."""
        selection = _selection(
            ids=tuple(i.lower() for i in request.ids), stages=tuple(request.stages),
            statuses=tuple(request.statuses), reason=request.reason, since=request.since,
        )  # fmt: skip
        if not selection.narrowed and not request.all:
            raise HTTPException(
                422, "say which letters: ids, stages, statuses, reason, since, or all"
            )
        if settings.kafka_bootstrap is None and not request.dry_run:
            raise HTTPException(503, "no broker configured here (RISKWIRE_KAFKA_BOOTSTRAP)")
        report = redrive(
            sessions, settings, selection, again=request.again, limit=request.limit,
            dry_run=request.dry_run,
        )  # fmt: skip
        return report.as_dict()

    return router
