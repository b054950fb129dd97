"""Replay and backfill jobs: a past period through the same pipeline functions, in event time.

A job reads documents from the database (or an archive file), sorted by ``(published_at, id)``, and
feeds them through ``score_documents`` (or the scores cached for the chosen model version), ``fan_out``
and a ``RiskEngine`` built by the same factory as the live stream's. A replay writes its scores,
rolling sentiment and alerts under its own run id, so it never touches live rows; a backfill imports
an archive and writes under ``live``, with the same insert-if-absent writes the stream uses.

Each page of documents is written in one transaction; every ``checkpoint_every`` documents, and with
the last page, that transaction also moves the job's checkpoint (a cursor, the engine's state and the
job's counts), so a job that is interrupted resumes where its last checkpoint was, repeating the
pages after it: writes are idempotent, and the counts are reset to the checkpoint's. (The engine's
state is most of a page's cost to store: a replay of 200 tickers carries megabytes of baseline
buckets.) Cancellation is a status in the database, so the CLI and the API can cancel each other's
jobs; a cancelled job checkpoints the pages it stored.
"""

from __future__ import annotations

import gc
import json
import logging
import multiprocessing
import queue
import sys
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import and_, func, select, tuple_, type_coerce
from sqlalchemy.orm import Session, defer, sessionmaker
from sqlalchemy.types import NullType

from ingest.files import JsonlSource
from models.ensemble import Ensemble
from models.routing import Scorer
from riskwire.delivery.model import sector_map
from riskwire.exceptions import InvalidRecord, RiskwireError
from riskwire.records import DeadLetter, Document, Kind, Score, TickerLink, group_key
from riskwire.replay_plot import plot_report
from riskwire.replay_writer import (
    Counts,
    PageWrite,
    copy_cached,
    forget_inherited,
    warm_up,
    write_page,
)
from riskwire.settings import Settings
from storage import repository
from storage.tables import DocumentRow, DocumentTickerRow, ReplayRunRow, ScoreRow
from streams.pipeline import RiskEngine, normalise, score_documents
from streams.pipeline.risk import Rule, Scored
from streams.pipeline.rules import build_risk_engine, configured_rules, parse_rules, rules_as_data
from streams.pipeline.stories import StoryIndex

log = logging.getLogger(__name__)

PENDING, RUNNING, CANCELLING = "pending", "running", "cancelling"
CANCELLED, DONE, FAILED = "cancelled", "done", "failed"
ACTIVE = (PENDING, RUNNING, CANCELLING)
PAGE = 20000
CHECKPOINT_EVERY = 50_000  # documents between checkpoints (and one with the last page)
WRITES_IN_FLIGHT = 2


class ReplayError(RiskwireError):
    """A replay that cannot run as asked, with the reason."""


@dataclass(frozen=True)
class ReplaySpec:
    """What to replay. ``source`` is ``db`` or the path of a JSONL archive of raw items."""

    start: datetime | None = None
    end: datetime | None = None
    tickers: tuple[str, ...] = ()
    model_version: str | None = None
    rules: tuple[Rule, ...] | None = None
    source: str = "db"
    baseline: str | None = "live"
    rescore: bool = False
    kind: str = "replay"

    def check(self) -> None:
        for name, t in (("from", self.start), ("to", self.end)):
            if t is not None and t.tzinfo is None:
                raise ReplayError(f"--{name} must carry a timezone (e.g. 2026-03-01T00:00Z)")
        if self.start and self.end and self.start >= self.end:
            raise ReplayError(f"--from {self.start.isoformat()} is not before --to {self.end}")
        if self.kind not in ("replay", "backfill"):
            raise ReplayError(f"unknown job kind {self.kind!r}")
        if self.kind == "backfill" and self.source == "db":
            raise ReplayError("a backfill imports an archive file; it cannot read from 'db'")
        if self.source == "db":
            if self.start is None or self.end is None:
                raise ReplayError("a replay from the database needs both --from and --to")
        elif not Path(self.source).is_file():
            raise ReplayError(f"source {self.source!r} is neither 'db' nor a readable file")


ProgressCallback = Callable[[int, int], None]


def create_job(sessions: sessionmaker[Session], settings: Settings, spec: ReplaySpec) -> str:
    """Record a pending job and return its id; the parameters are checked first."""
    spec.check()
    rules = spec.rules if spec.rules is not None else configured_rules(settings, sessions)
    job_id = f"{spec.kind}-{uuid.uuid4().hex[:12]}"
    now = datetime.now(UTC)
    source = spec.source if spec.source == "db" else str(Path(spec.source).resolve())
    row = ReplayRunRow(
        id=job_id, run_id=job_id if spec.kind == "replay" else "live", kind=spec.kind,
        status=PENDING, source=source, period_start=spec.start, period_end=spec.end,
        tickers=sorted({t.upper() for t in spec.tickers}), model_version=spec.model_version,
        rules={**rules_as_data(rules), "rescore": spec.rescore},
        baseline_run=spec.baseline if spec.kind == "replay" else None,
        created_at=now, updated_at=now, total=0, processed=0, rescored=0, cached=0,
        rejected=0, alerts=0,
    )  # fmt: skip
    with sessions.begin() as session:
        session.add(row)
    return job_id


def request_cancel(sessions: sessionmaker[Session], job_id: str) -> str:
    """Ask a job to stop after its current page; a job that has not started is cancelled at once."""
    with sessions.begin() as session:
        job = _job(session, job_id)
        if job.status == PENDING:
            job.status = CANCELLED
        elif job.status == RUNNING:
            job.status = CANCELLING
        job.updated_at = datetime.now(UTC)
        return job.status


def describe_job(job: ReplayRunRow) -> dict[str, Any]:
    """A job's parameters and progress, with an estimated time to finish while it runs."""
    eta = None
    if job.status == RUNNING and job.started_at and 0 < job.processed < job.total:
        elapsed = (job.updated_at - job.started_at).total_seconds()
        eta = elapsed / job.processed * (job.total - job.processed)
    return {
        "id": job.id, "run_id": job.run_id, "kind": job.kind, "status": job.status,
        "source": job.source,
        "period": [t.isoformat() if t else None for t in (job.period_start, job.period_end)],
        "tickers": job.tickers, "model_version": job.model_version,
        "baseline": job.baseline_run, "processed": job.processed, "total": job.total,
        "rescored": job.rescored, "cached": job.cached, "rejected": job.rejected,
        "alerts": job.alerts, "eta_s": eta, "error": job.error,
        "created_at": job.created_at.isoformat(),
        "started_at": job.started_at.isoformat() if job.started_at else None,
        "finished_at": job.finished_at.isoformat() if job.finished_at else None,
    }  # fmt: skip


def mark_interrupted(sessions: sessionmaker[Session], job_id: str) -> None:
    """A job stopped by its user (Ctrl-C) is cancelled: resumed, it continues from its last
    checkpoint (pages stored after it are done again)."""
    with sessions.begin() as session:
        job = _job(session, job_id)
        if job.status in ACTIVE:
            job.status, job.updated_at = CANCELLED, datetime.now(UTC)


STALE = timedelta(minutes=2)


def seems_alive(job: ReplayRunRow) -> float | None:
    """Seconds since a running job last stored a page, if recent enough to think it still runs."""
    if job.status != RUNNING:
        return None
    age = (datetime.now(UTC) - job.updated_at).total_seconds()
    return max(age, 0.001) if age < STALE.total_seconds() else None


def _job(session: Session, job_id: str, light: bool = False) -> ReplayRunRow:
    """The job's row; ``light`` leaves its checkpoint (megabytes of engine state) unread."""
    job = session.get(
        ReplayRunRow, job_id, options=[defer(ReplayRunRow.checkpoint)] if light else ()
    )
    if job is None:
        raise ReplayError(f"no replay job {job_id!r}")
    return job


@dataclass
class Item:
    """One document on its way through a replay: what the engine needs, the score cached for the
    job's model version when there is one, and the full document when it has to be stored."""

    id: str
    published_at: datetime
    tickers: tuple[str, ...]
    document: Document | None = None
    cached: CachedScore | None = None
    story_id: str | None = None


def _writer(in_process: bool, start: str | None = None) -> Executor:
    """One writer, so pages are stored (and checkpoints advance) in order.

    A child process is forked when that is safe (``start`` None), which starts it in milliseconds
    instead of the second a fresh interpreter takes to import riskwire: this process runs no other
    thread (a fork copies a lock some thread holds, held forever) and has not loaded torch (whose
    thread pools do not survive a fork). The API's jobs and re-scoring replays therefore spawn."""
    if in_process:
        return ThreadPoolExecutor(1, "replay-write")
    if start is None:
        safe = threading.active_count() == 1 and "torch" not in sys.modules
        start = "fork" if safe and "fork" in multiprocessing.get_all_start_methods() else "spawn"
    context = multiprocessing.get_context(start)
    return ProcessPoolExecutor(1, mp_context=context, initializer=forget_inherited)


@contextmanager
def _bulk_gc() -> Iterator[None]:
    """Collect garbage rarely while a job runs. A job allocates millions of small objects that
    hold no reference cycles (items, events, rows) and keeps large pages alive, so the collector's
    default rhythm (a pass every 700 allocations, full passes over everything alive) costs a third
    of reading a page and finds nothing. What is already alive is frozen out of its passes."""
    threshold = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*threshold)
        gc.unfreeze()


def group_keys(tickers: list[str], sector_of: dict[str, str], market: bool) -> list[str]:
    """The groups a document's tickers count in, as the live stream orders them: the tickers,
    their sectors, then the market (none for a document without tickers)."""
    if not tickers or not (sector_of or market):
        return tickers
    sectors = sorted({group_key("sector", sector_of[t]) for t in tickers if t in sector_of})
    return [*tickers, *sectors, *([group_key("market")] if market else [])]


def _flag_last(pages: Iterator[list[Item]]) -> Iterator[tuple[list[Item], bool]]:
    """Each page, and whether it is the last (the next is already read ahead)."""
    held: list[Item] | None = None
    for page in pages:
        if held is not None:
            yield held, False
        held = page
    if held is not None:
        yield held, True


def _prefetch(pages: Iterator[list[Item]], depth: int = 2) -> Iterator[list[Item]]:
    """Iterate ``pages`` in a thread, ``depth`` pages ahead of the consumer."""
    buffer: queue.Queue[Any] = queue.Queue(depth)
    done = object()
    stop = threading.Event()

    def fill() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        buffer.put(page, timeout=0.2)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            buffer.put(done)
        except BaseException as exc:  # handed to the consumer, raised there
            buffer.put(exc)

    thread = threading.Thread(target=fill, name="replay-read", daemon=True)
    thread.start()
    try:
        while True:
            item = buffer.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()


class CachedScore(NamedTuple):
    """A stored score, as the risk engine reads it; the row itself is copied inside the database."""

    document_id: str
    published_at: datetime
    score: float
    label: str
    ticker: str | None = None
    story_id: str | None = None
    disagreement: float = 0.0


class ReplayRunner:
    """Runs (or resumes) one job to its end, its cancellation or its failure."""

    def __init__(
        self,
        settings: Settings,
        sessions: sessionmaker[Session],
        ensemble_factory: Callable[[], Ensemble] | None = None,
        page_size: int = PAGE,
        process_writer_from: int = 20_000,
        process_start: str | None = None,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self._ensemble_factory = ensemble_factory
        self._ensemble: Scorer | None = None
        self.page_size = page_size
        self._sector_of: dict[str, str] | None = None
        # jobs with this many documents to go write from a child process (a second core); the
        # process costs about a second to start, so small jobs write from a thread
        self.process_writer_from = process_writer_from
        self.process_start = process_start  # "fork" or "spawn"; None: fork when that is safe
        self.checkpoint_every = checkpoint_every

    def ensemble(self) -> Scorer:
        if self._ensemble is None:
            from models.factory import make_ensemble

            self._ensemble = make_ensemble(self.settings, self._ensemble_factory)
            entries = self._ensemble.registry_entries()
            now = datetime.now(UTC)
            with self.sessions.begin() as session:
                repository.register_model_versions(session, entries, now)
        return self._ensemble

    def run(
        self, job_id: str, progress: ProgressCallback | None = None, resume: bool = False
    ) -> str:
        """Run the job from its checkpoint; returns its final status. Failures are recorded.

        A cancelled or failed job continues from its checkpoint only when ``resume`` is set.
        """
        try:
            with _bulk_gc():
                return self._run(job_id, progress, resume)
        except Exception as exc:
            log.exception("replay %s failed", job_id)
            reason = str(exc) if isinstance(exc, RiskwireError) else f"{type(exc).__name__}: {exc}"
            with self.sessions.begin() as session:
                job = _job(session, job_id)
                job.status, job.error = FAILED, reason[:4000]
                job.updated_at = job.finished_at = datetime.now(UTC)
            return FAILED

    def _run(self, job_id: str, progress: ProgressCallback | None, resume: bool) -> str:
        with self.sessions() as session:
            job = _job(session, job_id)
            status, version = job.status, job.model_version
        if status == DONE or (status in (CANCELLED, FAILED) and not resume):
            return status
        if version is None:  # the ensemble the configuration builds now
            version = self.ensemble().version
        with self.sessions.begin() as session:
            job = _job(session, job_id)
            if job.status == CANCELLING or (job.status == CANCELLED and not resume):
                job.status = CANCELLED
                return CANCELLED
            job.status, job.error, job.model_version = RUNNING, None, version
            job.started_at = job.started_at or datetime.now(UTC)
            job.updated_at = datetime.now(UTC)
            spec = _spec_of(job)
            run_id, checkpoint = job.run_id, job.checkpoint
            # pages stored after the checkpoint are done again: count from the checkpoint's counts
            # (a checkpoint without them moved with every page: the job's counts are its own)
            if checkpoint and "counts" not in checkpoint:
                counts = Counts(job.processed, job.rescored, job.cached, job.alerts)
            else:
                counts = Counts(**checkpoint["counts"]) if checkpoint else Counts()
                job.processed, job.rescored = counts.processed, counts.rescored
                job.cached, job.alerts = counts.cached, counts.alerts
        processed_before = counts.processed
        rules = spec.rules or ()
        engine = build_risk_engine(self.settings, run_id, rules=rules, lateness=timedelta(0))
        after: tuple[datetime, str] | None = None
        if checkpoint:
            engine.restore(checkpoint["engine"])
            t, doc_id = checkpoint["after"]
            after = (datetime.fromisoformat(t), doc_id)
        warmup = max([engine.trailing, *(r.span for r in engine.rules)])
        if any(r.needs_z for r in engine.rules):  # z-scores need the groups' baselines
            warmup += engine.baseline
        source = _source_for(spec, warmup, self.sessions, version)
        total = source.count()
        with self.sessions.begin() as session:
            job = _job(session, job_id)
            job.total = total
            rejected = source.store_rejects(session)
            if rejected is not None:
                job.rejected = rejected
        # Three stages overlap: a thread reads the next page, this thread runs the engine, a
        # writer (thread or child process) stores earlier pages with their checkpoints, in order
        # and at most WRITES_IN_FLIGHT pages behind, so memory stays bounded.
        processed = processed_before
        in_process = total - processed < self.process_writer_from
        target: str | sessionmaker[Session] = (
            self.sessions if in_process else self.settings.resolved_database_url
        )
        writer = _writer(in_process, self.process_start)
        try:
            with ThreadPoolExecutor(1, "replay-copy") as copier:
                if not in_process:  # the child starts (imports, connects) while this one reads
                    writer.submit(warm_up, target)
                copying: Future[int] | None = None
                if isinstance(source, DatabaseSource) and source.cache_run is not None:
                    # every cached score of the period, copied in one statement inside the database
                    # while the pages are read (the database works; this process hardly waits on
                    # it); idempotent if the job is resumed
                    assert spec.start is not None and spec.end is not None
                    copying = copier.submit(
                        copy_cached, self.sessions, run_id, version, spec.start, spec.end,
                        spec.tickers, source.cache_run,
                    )  # fmt: skip
                pending: deque[Future[int]] = deque()

                def settle(keep: int) -> None:
                    nonlocal processed
                    while len(pending) > keep:
                        processed += pending.popleft().result()
                        if progress is not None:
                            progress(processed, total)

                since = 0  # documents since the last checkpoint
                stored: PageWrite | None = None  # the last page handed to the writer
                for page, last in _flag_last(_prefetch(source.pages(after, self.page_size))):
                    if self._status(job_id) == CANCELLING:
                        if stored is not None and stored.engine_state is None:
                            # the engine is past exactly the pages handed over: checkpoint them
                            pending.append(writer.submit(write_page, target, PageWrite(
                                job_id=job_id, run_id=run_id, model_version=version, documents=0,
                                rescored=0, after=stored.after, engine_state=engine.state(),
                                counts=counts,
                            )))  # fmt: skip
                        settle(0)
                        if copying is not None:
                            copying.result()
                        with self.sessions.begin() as session:
                            job = _job(session, job_id)
                            job.status, job.updated_at = CANCELLED, datetime.now(UTC)
                        return CANCELLED
                    since += len(page)
                    moves = last or since >= self.checkpoint_every  # the checkpoint
                    result = self._compute(job_id, spec, version, engine, page, moves)
                    counts = counts.after(result)
                    if moves:
                        result.counts, since = counts, 0
                    settle(WRITES_IN_FLIGHT - 1)
                    pending.append(writer.submit(write_page, target, result))
                    stored = result
                if copying is not None:
                    copying.result()
                settle(0)
                from riskwire.replay_report import finish_report

                def draw(report: dict[str, Any], path: Path) -> Path:
                    """The plot, drawn by the writer process (matplotlib is loaded there)."""
                    return writer.submit(plot_report, report, path).result()

                with self.sessions.begin() as session:
                    job = _job(session, job_id, light=True)
                    out = self.settings.data_dir / "replays"
                    finish_report(session, job, out, plot_report if in_process else draw)
                    job.status = DONE
                    job.finished_at = job.updated_at = datetime.now(UTC)
        finally:
            # pages in flight are still stored, before the job's end (or failure) is recorded: a
            # resumed job must not read a checkpoint that a late page is about to move
            writer.shutdown(wait=True)
        return DONE

    def _status(self, job_id: str) -> str:
        """The job's status alone: the row's checkpoint is megabytes of JSON (the engine's state),
        and loading the row decoded it before every page."""
        with self.sessions() as session:
            status = session.scalar(select(ReplayRunRow.status).where(ReplayRunRow.id == job_id))
        if status is None:
            raise ReplayError(f"no replay job {job_id!r}")
        return status

    def _compute(
        self,
        job_id: str,
        spec: ReplaySpec,
        version: str,
        engine: RiskEngine,
        page: list[Item],
        checkpoint: bool = True,
    ) -> PageWrite:
        """Scores (cached or fresh) through the engine, in event-time order; nothing is written."""
        run_id = engine.run_id
        found: list[Item] = []  # cached scores found here, copied to the run with the page
        if not spec.rescore:
            # a database page comes with the scores of its source's cache run; an archive's
            # documents, and those that run lacks, are looked up in any run
            lacking = [i for i in page if i.cached is None]
            if lacking:
                self._find_cached(version, lacking)
                found = [i for i in lacking if i.cached is not None]
        missing = [i for i in page if i.cached is None]
        fresh: dict[str, Score] = {}
        if missing:
            ensemble = self.ensemble()
            if ensemble.version != version:
                raise ReplayError(
                    f"model version {version} cannot score here: {len(missing)} documents have no "
                    f"cached scores for it, and the configured ensemble is {ensemble.version}"
                )
            docs = self._documents(missing)
            fresh = {s.document_id: s for s in score_documents(ensemble, docs, run_id)}
        last = page[-1]
        out = PageWrite(
            job_id=job_id, run_id=run_id, model_version=version, documents=len(page),
            rescored=len(fresh), after=(last.published_at, last.id),
        )  # fmt: skip
        wanted = set(spec.tickers)
        rows, alerts = out.rows, out.alerts
        start = spec.start
        sector_of, market = self._groups(spec)
        for item in page:
            score: Scored = item.cached or fresh[item.id]
            keep = start is None or item.published_at >= start
            keys = group_keys(
                [t for t in item.tickers if not wanted or t in wanted], sector_of, market
            )
            for ticker in keys:
                update_ = engine.process(score, ticker)
                if keep:  # before the period, the engine only warms up
                    if update_.row is not None:
                        rows.append(update_.row)
                    alerts.extend(update_.alerts)
        out.new_scores = [s for s in fresh.values() if start is None or s.published_at >= start]
        # a database replay copies its cache run's scores when it begins, the rest here
        out.new_documents = [i.document for i in page if i.document is not None]
        out.copy_ids = [i.id for i in found if start is None or i.published_at >= start]
        out.copy_from = page[0].published_at
        out.engine_state = engine.state() if checkpoint else None
        out.aggregates = [
            a for a in engine.drain_aggregates() if start is None or a["window_end"] > start
        ]
        return out

    def _groups(self, spec: ReplaySpec) -> tuple[dict[str, str], bool]:
        """The sector map and market switch of the live stream; none for a replay of chosen
        tickers (its sectors and market would hold only those)."""
        if spec.tickers:
            return {}, False
        if self._sector_of is None:
            self._sector_of = dict(sector_map(self.settings)) if self.settings.sector_groups else {}
        return self._sector_of, self.settings.market_group

    def _find_cached(self, version: str, page: list[Item]) -> None:
        """Attach stored scores of ``version``, from any run, to items (in event-time order) that
        have none (found by event-time range)."""
        by_id = {i.id: i for i in page}
        query = select(
            ScoreRow.document_id, ScoreRow.score, ScoreRow.label, ScoreRow.disagreement
        ).where(
            ScoreRow.model_version == version,
            ScoreRow.published_at >= page[0].published_at,
            ScoreRow.published_at <= page[-1].published_at,
        )
        with self.sessions() as session:
            for doc_id, score, label, disagreement in session.execute(query):
                item = by_id.get(doc_id)
                if item is not None and item.cached is None:
                    item.cached = CachedScore(
                        doc_id, item.published_at, score, label, None, item.story_id, disagreement
                    )

    def _documents(self, items: list[Item]) -> list[Document]:
        if all(i.document is not None for i in items):
            return [i.document for i in items if i.document is not None]
        with self.sessions() as session:
            return load_documents(session, [i.id for i in items])


def load_documents(session: Session, ids: Sequence[str]) -> list[Document]:
    """Full documents with their ticker links, in the order of ``ids``."""
    rows: dict[str, DocumentRow] = {}
    links: dict[str, list[TickerLink]] = {}
    for start in range(0, len(ids), 900):
        chunk = list(ids[start : start + 900])
        rows.update(
            {r.id: r for r in session.scalars(select(DocumentRow).where(DocumentRow.id.in_(chunk)))}
        )
        for link in session.scalars(
            select(DocumentTickerRow).where(DocumentTickerRow.document_id.in_(chunk))
        ):
            links.setdefault(link.document_id, []).append(
                TickerLink(ticker=link.ticker, relevance=link.relevance)
            )
    return [
        Document(
            id=r.id, source=r.source, kind=Kind(r.kind), title=r.title, text=r.text, url=r.url,
            lang=r.lang, published_at=r.published_at, fetched_at=r.fetched_at,
            tickers=tuple(sorted(links.get(r.id, []), key=lambda t: t.ticker)),
            story_id=r.story_id, novelty=1.0 if r.novelty is None else r.novelty,
        )
        for r in (rows[i] for i in ids)
    ]  # fmt: skip


def _spec_of(job: ReplayRunRow) -> ReplaySpec:
    return ReplaySpec(
        start=job.period_start, end=job.period_end, tickers=tuple(job.tickers),
        model_version=job.model_version, rules=parse_rules(job.rules, f"job {job.id}"),
        source=job.source, baseline=job.baseline_run, rescore=bool(job.rules.get("rescore")),
        kind=job.kind,
    )  # fmt: skip


def _after(cursor: tuple[datetime, str] | None, t: datetime, doc_id: str) -> bool:
    return cursor is None or (t, doc_id) > cursor


class DatabaseSource:
    """Stored documents in ``[start - warmup, end)``, optionally of some tickers, by event time.

    Cached scores are read from one run, ``cache_run``: the run holding most scores of the model
    version over the period (``live`` on a tie), so a version replayed many times is not read many
    times over. Documents it lacks are looked up in any other run, page by page.
    """

    def __init__(
        self,
        spec: ReplaySpec,
        warmup: timedelta,
        sessions: sessionmaker[Session],
        version: str,
    ) -> None:
        assert spec.start is not None and spec.end is not None
        self.spec = spec
        self.sessions = sessions
        self.version = None if spec.rescore else version
        lower, upper = spec.start - warmup, spec.end
        period = [DocumentRow.published_at >= lower, DocumentRow.published_at < upper]
        if spec.tickers:
            mentions = select(DocumentTickerRow.document_id).where(
                DocumentTickerRow.ticker.in_(spec.tickers)
            )
            period.append(DocumentRow.id.in_(mentions))
        self.where = period
        with sessions.begin() as session:
            repository.refresh_statistics(session)
            self.cache_run = (
                None
                if self.version is None
                else repository.cache_run(session, self.version, lower, upper)
            )

    def count(self) -> int:
        with self.sessions() as session:
            query = select(func.count()).select_from(DocumentRow).where(*self.where)
            return int(session.scalar(query) or 0)

    def store_rejects(self, session: Session) -> int | None:
        return None

    def pages(self, after: tuple[datetime, str] | None, size: int) -> Iterator[list[Item]]:
        """Pages of about ``size`` documents, each with its tickers and cached score. One query per
        page, one row per (document, ticker), read off the (published_at, id) index with a keyset
        cursor, and on the connection (no ORM, and event times parsed here: the hot path)."""
        columns = [
            DocumentRow.id,
            type_coerce(DocumentRow.published_at, NullType()),
            DocumentRow.story_id,
            DocumentTickerRow.ticker,
        ]
        query = select(*columns).outerjoin(
            DocumentTickerRow, DocumentTickerRow.document_id == DocumentRow.id
        )
        if self.cache_run is not None:
            query = query.add_columns(
                ScoreRow.score, ScoreRow.label, ScoreRow.disagreement
            ).outerjoin(
                ScoreRow,
                and_(
                    ScoreRow.run_id == self.cache_run,
                    ScoreRow.document_id == DocumentRow.id,
                    ScoreRow.model_version == self.version,
                ),
            )
        query = query.where(*self.where).order_by(DocumentRow.published_at, DocumentRow.id)
        cursor, limit = after, size
        while True:
            paged = query
            if cursor is not None:
                paged = paged.where(
                    tuple_(DocumentRow.published_at, DocumentRow.id) > tuple_(*cursor)
                )
            with self.sessions() as session:
                rows = session.connection().execute(paged.limit(limit)).all()
            if not rows:
                return
            complete = len(rows) < limit
            if not complete:  # the last document's rows may go on past the limit: next page
                last_id = rows[-1][0]
                rows = [r for r in rows if r[0] != last_id]
                if not rows:  # one document with more mentions than a page: read wider
                    limit *= 2
                    continue
            page = _items(rows)
            yield page
            if complete:
                return
            cursor, limit = (page[-1].published_at, page[-1].id), size


def _utc(value: datetime | str) -> datetime:
    """An event time as the driver returns it untyped: text from SQLite, a datetime from PostgreSQL."""
    if isinstance(value, str):
        return datetime.fromisoformat(value).replace(tzinfo=UTC)
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _items(rows: Sequence[Any]) -> list[Item]:
    """Group (id, published_at, story_id, ticker[, score, label, disagreement]) rows, ordered by
    document, into items."""
    page: list[Item] = []
    item: Item | None = None
    tickers: list[str] = []
    for row in rows:
        doc_id = row[0]
        if item is None or item.id != doc_id:
            if item is not None:
                item.tickers = tuple(sorted(set(tickers)))
            published_at = _utc(row[1])
            item = Item(doc_id, published_at, (), story_id=row[2])
            tickers = []
            if len(row) > 4 and row[5] is not None:
                item.cached = CachedScore(
                    doc_id, published_at, row[4], row[5], None, row[2], row[6]
                )
            page.append(item)
        if row[3] is not None:
            tickers.append(row[3])
    if item is not None:
        item.tickers = tuple(sorted(set(tickers)))
    return page


class FileSource:
    """A JSONL archive of raw items, normalised and sorted by event time in memory.

    Lines that are not records, and records that do not normalise, become dead letters (stored
    once, with the reason) and are counted as rejected.
    """

    def __init__(self, spec: ReplaySpec, warmup: timedelta) -> None:
        self.spec = spec
        self.rejects: list[DeadLetter] = []
        now = datetime.now(UTC)
        documents: dict[str, Document] = {}
        wanted = set(spec.tickers)
        lower = spec.start - warmup if spec.start is not None else None
        for entry in JsonlSource(Path(spec.source)).read():
            if isinstance(entry, DeadLetter):
                self.rejects.append(entry.model_copy(update={"stage": spec.kind}))
                continue
            try:
                doc = normalise(entry)
            except InvalidRecord as exc:
                # the item as archived (not its fetch time), so a re-import repeats the same letter
                original = json.dumps(entry.payload, sort_keys=True, ensure_ascii=False)
                self.rejects.append(
                    DeadLetter.of(spec.kind, str(exc), original, occurred_at=now, topic=spec.source)
                )
                continue
            if lower is not None and doc.published_at < lower:
                continue
            if spec.end is not None and doc.published_at >= spec.end:
                continue
            if wanted and not wanted & {t.ticker for t in doc.tickers}:
                continue
            documents.setdefault(doc.id, doc)
        ordered = sorted(documents.values(), key=lambda d: (d.published_at, d.id))
        stories = StoryIndex()  # in event-time order, as the archive's news was published
        self.items = []
        for d in ordered:
            story = stories.assign(d.id, d.text, d.published_at, [t.ticker for t in d.tickers])
            d = d.model_copy(update={"story_id": story.story_id, "novelty": story.novelty})
            tickers = tuple(sorted(t.ticker for t in d.tickers))
            self.items.append(Item(d.id, d.published_at, tickers, d, story_id=d.story_id))

    def count(self) -> int:
        return len(self.items)

    def store_rejects(self, session: Session) -> int:
        repository.insert_dead_letters(session, self.rejects)
        return len(self.rejects)

    def pages(self, after: tuple[datetime, str] | None, size: int) -> Iterator[list[Item]]:
        remaining = [i for i in self.items if _after(after, i.published_at, i.id)]
        for start in range(0, len(remaining), size):
            yield remaining[start : start + size]


def _source_for(
    spec: ReplaySpec, warmup: timedelta, sessions: sessionmaker[Session], version: str
) -> DatabaseSource | FileSource:
    if spec.source == "db":
        return DatabaseSource(spec, warmup, sessions, version)
    return FileSource(spec, warmup)
