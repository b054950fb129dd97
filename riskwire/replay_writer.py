"""A replay's writes: one page's results with the job's checkpoint, in one transaction.

``ReplayRunner`` hands each page to a writer while its engine works on the next one. For small jobs
the writer is a thread; for large ones it is a child process, so the database work (parameter
processing, the driver, SQLite itself) runs on another core instead of competing for the GIL. This
module imports only storage and the record types, so the child starts quickly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from riskwire import replay_plot
from riskwire.records import Alert, Document, Score
from storage import make_engine, repository, session_factory
from storage.tables import ReplayRunRow


class Counts(NamedTuple):
    """A job's counts after a page: documents, those scored again, those cached, alerts fired."""

    processed: int = 0
    rescored: int = 0
    cached: int = 0
    alerts: int = 0

    def after(self, page: PageWrite) -> Counts:
        return Counts(
            self.processed + page.documents, self.rescored + page.rescored,
            self.cached + page.documents - page.rescored, self.alerts + page.fired,
        )  # fmt: skip


@dataclass
class PageWrite:
    """Everything one page stores; plain data, so it crosses to a child process by pickling.
    ``engine_state`` and ``counts`` are set on the pages that move the checkpoint."""

    job_id: str
    run_id: str
    model_version: str
    documents: int
    rescored: int
    after: tuple[datetime, str]
    engine_state: dict[str, Any] | None = None
    counts: Counts | None = None
    new_documents: list[Document] = field(default_factory=list)
    copy_ids: list[str] = field(default_factory=list)
    copy_from: datetime | None = None
    new_scores: list[Score] = field(default_factory=list)
    rows: list[dict[str, Any]] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    aggregates: list[dict[str, Any]] = field(default_factory=list)

    @property
    def fired(self) -> int:
        return sum(a.state == "firing" for a in self.alerts)


_SESSIONS: dict[str, sessionmaker[Session]] = {}


def _sessions(url: str) -> sessionmaker[Session]:
    if url not in _SESSIONS:
        _SESSIONS[url] = session_factory(make_engine(url))
    return _SESSIONS[url]


def forget_inherited() -> None:
    """In a forked writer: drop the parent's engines without touching their connections (they
    belong to the parent), so this process opens its own."""
    for sessions in _SESSIONS.values():
        bind = sessions.kw.get("bind")
        if bind is not None:
            bind.dispose(close=False)
    _SESSIONS.clear()


def warm_up(target: str | sessionmaker[Session]) -> int:
    """Connect once, so a child writer's imports and connection are ready before its first page,
    then load matplotlib for the report's plot, which the child draws when the job ends."""
    sessions = _sessions(target) if isinstance(target, str) else target
    with sessions() as session:
        session.connection()
    replay_plot.prepare()
    return 0


def copy_cached(
    target: str | sessionmaker[Session],
    run_id: str,
    model_version: str,
    start: datetime,
    end: datetime,
    tickers: tuple[str, ...],
    from_run: str | None = None,
) -> int:
    """Copy the period's stored scores of ``model_version`` (held by ``from_run``, when given) to
    the run; counts no documents."""
    sessions = _sessions(target) if isinstance(target, str) else target
    with sessions.begin() as session:
        repository.copy_scores(
            session, run_id, model_version, start, end, tickers=tickers, from_run=from_run
        )
    return 0


def write_page(target: str | sessionmaker[Session], page: PageWrite) -> int:
    """Store the page (and move the checkpoint past it, if it carries one); returns the number
    of documents."""
    sessions = _sessions(target) if isinstance(target, str) else target
    with sessions.begin() as session:
        if page.new_documents:
            repository.upsert_documents(session, page.new_documents)
        if page.copy_ids and page.copy_from is not None:
            end = page.after[0] + timedelta(microseconds=1)
            repository.copy_scores(
                session, page.run_id, page.model_version, page.copy_from, end, page.copy_ids
            )
        repository.upsert_scores(session, page.new_scores)
        repository.upsert_ticker_sentiment(session, page.rows)
        repository.upsert_aggregates(session, page.aggregates)
        repository.upsert_alerts(session, page.alerts)
        values: dict[str, Any] = {
            "processed": ReplayRunRow.processed + page.documents,
            "rescored": ReplayRunRow.rescored + page.rescored,
            "cached": ReplayRunRow.cached + page.documents - page.rescored,
            "alerts": ReplayRunRow.alerts + page.fired,
            "updated_at": datetime.now(UTC),
        }
        if page.engine_state is not None:
            assert page.counts is not None
            values["checkpoint"] = {
                "after": [page.after[0].isoformat(), page.after[1]],
                "engine": page.engine_state,
                "counts": page.counts._asdict(),
            }
        session.execute(update(ReplayRunRow).where(ReplayRunRow.id == page.job_id).values(values))
    return page.documents
